"""Each test of network faults gets a lab (tests/netlab.py): hosts in network namespaces on
a bridge of their own, removed afterwards whatever happened."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests import netlab


@pytest.fixture
def lab() -> Iterator[netlab.Lab]:
    reason = netlab.missing()
    if reason and os.geteuid() != 0:  # (not an install step: a user who cannot be root)
        pytest.skip(f"the network-fault tests need root: {reason}")
    if reason:
        pytest.fail(f"the network-fault tests cannot run here: {reason}")
    netlab.sweep()  # (what a killed earlier run left)
    with netlab.Lab() as made:
        yield made
