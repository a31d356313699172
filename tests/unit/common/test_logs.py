"""Log lines: a client's string cannot forge a line or make the log binary."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from llmlb.common.logs import configure_logging


@pytest.fixture
def configured() -> Iterator[None]:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    yield
    root.handlers[:], _ = saved
    root.setLevel(saved[1])


def test_control_characters_in_messages_are_escaped(
    configured: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("info", "text")
    logging.getLogger("llmlb.test").info("node %s joined", "evil\n2026-01-01 INFO forged\x00")
    err = capsys.readouterr().err
    assert err.count("\n") == 1  # one line
    assert "evil\\x0a2026-01-01 INFO forged\\x00" in err


def test_alembic_chatter_is_quiet_at_info(
    configured: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("info", "text")
    logging.getLogger("alembic.runtime.plugins").info("setup plugin alembic.autogenerate")
    assert capsys.readouterr().err == ""
