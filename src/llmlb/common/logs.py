"""Logging: human-readable lines by default, JSON lines on request; a request id on every line;
levels changed per logger while the process runs (``set_level``, through the admin API).

The router's access log is the logger ``llmlb.access``: one line per client request once it
is settled (a stream at its end), with its request id, key, model, node, status, latency,
time to first token and tokens, never a body. It is at warning (off) unless the settings'
``access_log`` or a runtime level of ``info`` turns it on; in JSON the fields are keys of
the line.
"""

from __future__ import annotations

import logging
import random
import re
import sys
import time
from collections import deque
from contextvars import ContextVar
from typing import Any

import orjson

from llmlb.common.errors import BadRequest

request_id_var: ContextVar[str] = ContextVar("llmlb_request_id", default="-")


def new_request_id() -> str:
    # An id, not a secret: the process's PRNG (reseeded at fork) costs no system call, where
    # os.urandom cost one per request.
    return f"{random.getrandbits(64):016x}"


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):  # (the access log's: keys of the line)
            entry.update(fields)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


# Control characters in a message (a client's model or node name, say) would forge or break
# log lines: written as escapes instead.
_CONTROL = {code: f"\\x{code:02x}" for code in (*range(32), 127)}


class TextFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = record.message.translate(_CONTROL)
        return super().formatMessage(record)


class LogRing(logging.Handler):
    """The process's recent log lines in memory (bounded), for the dashboard's log page.

    Installed on the root logger by ``configure_logging``; ``LogRing.of_process()`` finds it
    there (or installs one), so there is no module-level instance to share.
    """

    def __init__(self, size: int = 2000) -> None:
        super().__init__()
        self._lines: deque[dict[str, Any]] = deque(maxlen=size)
        self._seq = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage().translate(_CONTROL)[:4000]
        except Exception:  # a bad format string in someone's log call must not break logging
            message = str(record.msg)[:4000]
        self._seq += 1
        self._lines.append({
            "seq": self._seq,
            "ts": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "msg": message,
        })  # fmt: skip

    def lines(
        self, limit: int = 200, level: str | None = None, after: int = 0
    ) -> list[dict[str, Any]]:
        """The newest ``limit`` lines (oldest first), at ``level`` or above, after ``after``."""
        floor = logging.getLevelName(level.upper()) if level else 0
        floor = floor if isinstance(floor, int) else 0
        chosen = [
            line for line in list(self._lines)
            if line["seq"] > after and logging.getLevelName(line["level"].upper()) >= floor
        ]  # fmt: skip
        return chosen[-limit:]

    @classmethod
    def of_process(cls) -> LogRing:
        root = logging.getLogger()
        for handler in root.handlers:
            if isinstance(handler, cls):
                return handler
        ring = cls()
        ring.addFilter(_RequestIdFilter())
        root.addHandler(ring)
        return ring


TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s [%(request_id)s] %(message)s"


def configure_logging(level: str = "info", fmt: str = "text") -> None:
    """Route llmlb's and uvicorn's loggers through one handler on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestIdFilter())
    if fmt == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(TextFormatter(TEXT_FORMAT, "%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger()
    ring = LogRing()
    ring.addFilter(_RequestIdFilter())
    root.handlers[:] = [handler, ring]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # One line per outgoing request would drown the log (heartbeats); keep them at debug only.
    logging.getLogger("httpx").setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
    # Alembic narrates every plugin it sets up; llmlb logs the migration it ran (router.storage.db).
    logging.getLogger("alembic").setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
    # aiosqlite's debug lines carry every statement's parameters: endpoints' keys, password
    # and key hashes. Never logged, whatever the level.
    logging.getLogger("aiosqlite").setLevel(logging.INFO)
    # Access lines duplicate our own request log; keep them at debug only.
    logging.getLogger("uvicorn.access").setLevel(
        logging.DEBUG if level == "debug" else logging.WARNING
    )


ACCESS_LOGGER = "llmlb.access"
LEVELS = ("debug", "info", "warning", "error", "critical")
_LOGGER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,99}")
# Never below info: aiosqlite's debug lines carry statements' parameters (key and password
# hashes, endpoints' keys).
_FLOORS = {"aiosqlite": logging.INFO}


def levels() -> dict[str, str]:
    """The root's level (as ``""``) and every logger's that has one of its own."""
    out = {"": logging.getLevelName(logging.getLogger().level).lower()}
    for name, logger in sorted(logging.root.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and logger.level != logging.NOTSET:
            out[name] = logging.getLevelName(logger.level).lower()
    return out


def level_change(body: dict[str, Any]) -> tuple[str, str | None]:
    """``{"logger": NAME, "level": LEVEL}`` (the root's name is ``""``; a null level: the
    parent's), as a change for ``set_level``."""
    name, level = body.get("logger", ""), body.get("level")
    if not isinstance(name, str):
        raise BadRequest("'logger' is a logger's name (\"\" for the root)", param="logger")
    if level is not None and not isinstance(level, str):
        raise BadRequest("'level' is a level's name, or null", param="level")
    return name, level


def set_level(name: str, level: str | None) -> None:
    """Set a logger's level while the process runs (``None``: back to its parent's, for a
    logger other than the root). Only loggers that exist: a caller cannot make new ones."""
    if name and (not _LOGGER_NAME.fullmatch(name) or name not in logging.root.manager.loggerDict):
        raise BadRequest(f"no logger named {name[:100]!r} in this process", param="logger")
    if level is not None and level not in LEVELS:
        raise BadRequest(f"'level' is one of {', '.join(LEVELS)}, or null to inherit",
                         param="level")  # fmt: skip
    if level is None and not name:
        raise BadRequest("the root logger has a level of its own: name one", param="level")
    value = logging.getLevelName(level.upper()) if level is not None else logging.NOTSET
    floor = _FLOORS.get(name.split(".", 1)[0], logging.NOTSET)
    if value < floor or (level is None and floor):
        raise BadRequest(f"{name} stays at info or above: its debug lines carry secrets",
                         param="level")  # fmt: skip
    logging.getLogger(name or None).setLevel(value)
