"""The image, built once for the image and compose tests."""

from __future__ import annotations

import pytest

from tests.deploy import containers


@pytest.fixture(scope="session")
def image() -> str:
    assert not containers.missing_tools(), "make test installs them (make container-tools)"
    return containers.build_image()
