"""The audit trail: every change made through the admin API (the dashboard and the CLI call
it too), with who made it (a user, or an API key's id), what (the method and path, the
body's fields with every secret blanked), when, from where (the client's address) and the
result (the answer's status). Kept in the database for every router to read, as long as
the request history (``history_days``), readable and exportable through the admin API.

Recorded: writes (any method but GET and HEAD) by a caller the admin API let in, whatever
the handler answered, a refusal included; a change the caller was not allowed to try (no
credentials, or a viewer) is not, so that nobody can fill the table without credentials.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import ColumnElement, and_, delete, func, insert, select, true
from sqlalchemy.ext.asyncio import AsyncEngine

from llmlb.router.storage.db import audit
from llmlb.router.telemetry.history import Who

log = logging.getLogger(__name__)

MAX_DETAIL_BYTES = 4096
MAX_STRING = 200
# Fields whose values are secrets, wherever they are in a body: blanked, never stored.
# (``key`` and ``api_key`` are secrets, ``key_id`` is not.)
_SECRET = re.compile(r"pass|secret|token|authorization|credential|(^|_)key$", re.IGNORECASE)
REDACTED = "[redacted]"


@dataclass(frozen=True)
class AuditFilter:
    """Which rows: every field that is set must match."""

    user: str | None = None
    key_id: str | None = None
    action: str | None = None  # "POST /api/keys"
    since: float | None = None
    until: float | None = None

    def where(self) -> ColumnElement[bool]:
        conditions: list[ColumnElement[bool]] = []
        for column, value in ((audit.c.user, self.user), (audit.c.key_id, self.key_id),
                              (audit.c.action, self.action)):  # fmt: skip
            if value is not None:
                conditions.append(column == value)
        if self.since is not None:
            conditions.append(audit.c.ts >= self.since)
        if self.until is not None:
            conditions.append(audit.c.ts < self.until)
        return and_(true(), *conditions)


def redacted(value: Any, depth: int = 0) -> Any:
    """A body as the trail keeps it: secrets blanked, strings and lists bounded."""
    if depth > 4:
        return "..."
    if isinstance(value, dict):
        return {str(k)[:MAX_STRING]: REDACTED if _SECRET.search(str(k)) and v is not None
                else redacted(v, depth + 1) for k, v in list(value.items())[:50]}  # fmt: skip
    if isinstance(value, list):
        return [redacted(v, depth + 1) for v in value[:50]]
    if isinstance(value, str):
        return value[:MAX_STRING]
    return value


def detail_of(body: bytes | None) -> Any:
    """A request body's audit detail: its JSON with secrets blanked, or its size."""
    if not body:
        return None
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {"bytes": len(body)}  # (not JSON: nothing of it is kept)
    detail = redacted(data)
    if len(orjson.dumps(detail)) > MAX_DETAIL_BYTES:
        return {"fields": sorted(detail)[:50]} if isinstance(detail, dict) else {"bytes": len(body)}
    return detail


class AuditTrail:
    def __init__(self, engine: AsyncEngine, retention_days: float) -> None:
        self._engine = engine
        self._retention = retention_days * 86400

    async def record(self, who: Who, source: str | None, method: str, path: str,
                     target: dict[str, Any], status: int, body: bytes | None) -> None:  # fmt: skip
        """One change; a database that fails is logged, never the caller's error (the
        change itself is made or refused by then)."""
        row = {
            "ts": time.time(), "user": who.user, "key_id": who.key_id,
            "source": (source or "")[:64] or None, "action": f"{method} {path}"[:300],
            "target": redacted(target) or None, "status": status, "detail": detail_of(body),
        }  # fmt: skip
        try:
            async with self._engine.begin() as connection:
                await connection.execute(insert(audit).values(**row))
        except Exception as exc:
            log.warning("the audit trail could not record %s (status %d): %s: %s",
                        row["action"], status, type(exc).__name__, exc)  # fmt: skip

    async def query(self, filters: AuditFilter, *, limit: int = 100,
                    offset: int = 0) -> tuple[int, list[dict[str, Any]]]:  # fmt: skip
        where = filters.where()
        async with self._engine.connect() as connection:
            total = (await connection.execute(select(func.count()).select_from(audit)
                                              .where(where))).scalar_one()  # fmt: skip
            rows = await connection.execute(select(audit).where(where)
                                            .order_by(audit.c.id.desc())
                                            .limit(limit).offset(offset))  # fmt: skip
            return int(total), [{str(k): v for k, v in row._mapping.items()} for row in rows]

    async def prune(self) -> None:
        cutoff = time.time() - self._retention
        async with self._engine.begin() as connection:
            await connection.execute(delete(audit).where(audit.c.ts < cutoff))
