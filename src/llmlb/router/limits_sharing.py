"""Per-key limits across routers that share a database.

Each router process keeps counters of what it let each limited key use since it started
(``KeyLimiter.used``) and writes those that changed to its own ``key_usage`` rows, one per
key, every ``limit_share_seconds``. In the same round it reads the other processes' rows and
takes what grew since the last round from its own buckets. Counters, not times, cross the
database, so routers need not agree on the clock.

A row first seen in the first round is history from before this router started: only what
it adds later counts. A row that appears later is a process that started since, so all of
it counts. Rows not written for an hour (routers gone) are deleted; a live router rewrites
all of its rows every quarter of that, so none of its rows is taken for gone.
"""

from __future__ import annotations

import time
import uuid

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from llmlb.router.db import key_usage
from llmlb.router.limits import KeyLimiter

STALE_ROWS_SECONDS = 3600.0


class LimitSharing:
    def __init__(self, engine: AsyncEngine, limiter: KeyLimiter) -> None:
        self._engine = engine
        self._limiter = limiter
        self.process = str(uuid.uuid4())
        self._read: dict[tuple[str, str], tuple[int, int]] | None = None  # None: no round yet
        self._cleared_at = 0.0

    async def share(self) -> None:
        """One round: write this process's changed counters, take the others' growth."""
        limiter, now = self._limiter, time.time()
        changed, limiter.unshared = limiter.unshared, set()
        housekeeping = now - self._cleared_at > STALE_ROWS_SECONDS / 4
        if housekeeping:
            changed |= set(limiter.used)
        rows = [
            {"process": self.process, "key_id": key_id, "requests": limiter.used[key_id][0],
             "tokens": limiter.used[key_id][1], "updated_at": now}
            for key_id in changed
        ]  # fmt: skip
        try:
            async with self._engine.begin() as connection:
                if rows:
                    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
                    upsert = dialect.insert(key_usage)
                    await connection.execute(
                        upsert.on_conflict_do_update(
                            index_elements=["process", "key_id"],
                            set_={c: upsert.excluded[c] for c in ("requests", "tokens",
                                                                  "updated_at")},
                        ),
                        rows,
                    )  # fmt: skip
                if housekeeping:
                    self._cleared_at = now
                    await connection.execute(
                        delete(key_usage).where(key_usage.c.updated_at < now - STALE_ROWS_SECONDS)
                    )
                others = list(
                    await connection.execute(
                        select(key_usage).where(key_usage.c.process != self.process)
                    )
                )
        except BaseException:
            limiter.unshared |= changed  # written next round
            raise
        first_round, self._read = self._read is None, self._read or {}
        read = self._read
        for row in others:
            before = read.get((row.process, row.key_id))
            read[(row.process, row.key_id)] = (row.requests, row.tokens)
            if before is None and first_round:
                continue  # from before this router started
            requests = row.requests - (before[0] if before else 0)
            tokens = row.tokens - (before[1] if before else 0)
            if requests or tokens:
                limiter.others_used(row.key_id, requests, tokens)
        gone = set(read) - {(row.process, row.key_id) for row in others}
        for entry in gone:
            del read[entry]
