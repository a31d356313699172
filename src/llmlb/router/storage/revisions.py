"""Revisions: how routers on one database learn what another changed, reading only that.

A table that routers hold in memory (the API keys) has a counter in ``revisions``. Every
write to the table takes the counter's next value and stamps the rows it writes with it, in
the same transaction; a reader compares the counter with the value it saw last and, when it
moved, reads the rows stamped since. Writers queue on the counter's row lock, so a reader
that sees value N also sees every write stamped N or less.

Readers look every ``key_sync_seconds``. On PostgreSQL the write also announces itself
(``NOTIFY``, delivered when it commits) to every router listening (``RevisionListener``),
which then reads at once: milliseconds instead of the interval, which remains the bound
when the listening connection is lost, and on SQLite.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from llmlb.router.storage.db import revisions

log = logging.getLogger(__name__)
CHANNEL = "llmlb_revisions"


async def next_revision(connection: AsyncConnection, topic: str) -> int:
    """The next value of ``topic``'s counter, taken inside the caller's transaction."""
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    upsert = dialect.insert(revisions).values(topic=topic, value=1)
    statement = upsert.on_conflict_do_update(
        index_elements=["topic"], set_={"value": revisions.c.value + 1}
    ).returning(revisions.c.value)
    value = int((await connection.execute(statement)).scalar_one())
    if connection.dialect.name == "postgresql":  # heard by every router when this commits
        await connection.execute(text("SELECT pg_notify(:channel, :topic)"),
                                 {"channel": CHANNEL, "topic": topic})  # fmt: skip
    return value


async def current_revision(connection: AsyncConnection, topic: str) -> int:
    """``topic``'s counter now (0 before its first write)."""
    value = await connection.scalar(select(revisions.c.value).where(revisions.c.topic == topic))
    return int(value or 0)


class RevisionListener:
    """A PostgreSQL connection held open to hear the revisions other routers announce;
    ``heard(topic)`` is called for each. ``ensure`` (re)opens it: the sync loop calls it every
    round, so a connection lost with the database is opened again once it is back."""

    def __init__(self, engine: AsyncEngine, heard: Callable[[str], None]) -> None:
        self._engine = engine
        self._heard = heard
        self._connection: AsyncConnection | None = None
        self._driver: Any = None  # asyncpg's connection, under SQLAlchemy's

    async def ensure(self) -> None:
        if self._engine.dialect.name != "postgresql":
            return
        if self._driver is not None and not self._driver.is_closed():
            return
        await self.close()
        connection = await self._engine.connect()
        try:
            raw = await connection.get_raw_connection()
            driver = raw.driver_connection
            assert driver is not None
            await driver.add_listener(CHANNEL, self._on_notify)
        except BaseException:
            await connection.close()
            raise
        self._connection, self._driver = connection, driver
        log.debug("listening for revisions on %s", CHANNEL)

    def _on_notify(self, _connection: Any, _pid: int, _channel: str, topic: str) -> None:
        self._heard(topic)

    async def close(self) -> None:
        connection, self._connection, self._driver = self._connection, None, None
        if connection is not None:
            try:
                await connection.invalidate()  # a listening connection goes nowhere near the pool
            except Exception:  # it is gone already
                log.debug("closing the revision listener", exc_info=True)
