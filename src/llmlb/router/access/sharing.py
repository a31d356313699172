"""Per-key limits across routers that share a database.

Each router process keeps counters of what it let each limited key use since it started
(``KeyLimiter.used``) and writes those that changed to its own ``key_usage`` rows, one per
key, every ``limit_share_seconds``. In the same round it reads the other processes' rows and
takes what grew since the last round from its own buckets. Counters, not times, cross the
database, so routers need not agree on the clock.

A row first seen in the first round is history from before this router started: only what
it adds later counts. A row that appears later is a process that started since, so all of
it counts. A row that has not changed for an hour of a reader's own monotonic time (its
router is gone) is deleted by that reader; a live router rewrites all of its rows every
quarter of that, so none of its rows is taken for gone, whatever the routers' clocks say.
A row that comes back after all (a router cut off from the database for an hour) counts
as new, but no more than a minute's allowance of it (KeyLimiter.others_used).
"""

from __future__ import annotations

import time
import uuid

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from llmlb.router.access.limits import KeyLimiter
from llmlb.router.storage.db import key_usage

STALE_ROWS_SECONDS = 3600.0


class LimitSharing:
    def __init__(self, engine: AsyncEngine, limiter: KeyLimiter, siblings: str = "") -> None:
        """``siblings``: with worker processes, the prefix of every worker's process id
        (from their router's id). Their rows are for other routers: the workers share what
        keys use on their board, at each request (router.workers.board)."""
        self._engine = engine
        self._limiter = limiter
        self._siblings = siblings
        # (36 characters at most: the column's width)
        self.process = (
            siblings + uuid.uuid4().hex[: 36 - len(siblings)] if siblings else str(uuid.uuid4())
        )
        # (process, key) -> (requests, tokens, updated_at) as read last, and since when
        # (monotonic) unchanged. None: no round yet.
        self._read: dict[tuple[str, str], tuple[int, int, float, float]] | None = None
        self._rewritten_at = float("-inf")  # monotonic

    async def share(self) -> None:
        """One round: write this process's changed counters, take the others' growth."""
        self._limiter.take_workers_use()  # (sibling workers: from their board, not here)
        limiter, now, monotonic = self._limiter, time.time(), time.monotonic()
        changed, limiter.unshared = limiter.unshared, set()
        if monotonic - self._rewritten_at > STALE_ROWS_SECONDS / 4:  # show this process lives
            self._rewritten_at = monotonic
            changed |= set(limiter.used)
        stale = [
            (process, key_id, seen[2]) for (process, key_id), seen in (self._read or {}).items()
            if monotonic - seen[3] > STALE_ROWS_SECONDS
        ]  # fmt: skip
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
                for process, key_id, updated_at in stale:  # unchanged since: its router is gone
                    await connection.execute(delete(key_usage).where(
                        key_usage.c.process == process, key_usage.c.key_id == key_id,
                        key_usage.c.updated_at == updated_at,
                    ))  # fmt: skip
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
            values = (row.requests, row.tokens, row.updated_at)
            since = before[3] if before is not None and before[:3] == values else monotonic
            read[(row.process, row.key_id)] = (*values, since)  # (a gone worker's, deleted too)
            if before is None and first_round:
                continue  # from before this router started
            if self._siblings and row.process.startswith(self._siblings):
                continue  # a sibling worker's: taken from the board already
            requests = row.requests - (before[0] if before else 0)
            tokens = row.tokens - (before[1] if before else 0)
            if requests or tokens:
                limiter.others_used(row.key_id, requests, tokens)
        gone = set(read) - {(row.process, row.key_id) for row in others}
        for entry in gone:
            del read[entry]
