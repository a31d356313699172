"""Request history: one row per request, written in batches off the request path.

Built to stay quick at hundreds of millions of rows: each batch also adds its requests to the
per-minute sums (``request_minutes``) that the dashboard's series reads; each filter of a page
has an index ending in the time; a page counts its matches only up to ``COUNT_CAP``; and the
retention purge deletes ``PRUNE_BATCH`` rows a transaction, off the writer's path, so that
writes go on between its batches.

One module (about 430 lines) on purpose: the writer, the per-minute sums, the purge and the
reads all follow the same two tables' layout, and a change to one (a column, an index, the
minute's key) has to be made in the others in the same place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, bindparam, case, delete, func, insert, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from llmlb.common.errors import NotFound
from llmlb.router.storage.db import ping, request_minutes, requests

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Who:
    """Who sent a request, as history and limits know them: an API key, or a signed-in user
    (the dashboard's playground, or basic auth)."""

    key_id: str | None = None
    user_id: str | None = None
    user: str | None = None  # the user's name, for the history row

    @property
    def subject(self) -> str | None:
        """What limits count against: the key, else the user."""
        return self.key_id or self.user_id


NOBODY = Who()  # a caller with no key or account: loopback before any key exists, --no-auth


@dataclass
class RequestRecord:
    # Rows are this record's __dict__ (not dataclasses.asdict, which deep-copies every value
    # and cost more than the insert): keep the fields plain values.
    ts: float
    request_id: str
    key_id: str | None
    endpoint: str
    model: str
    node_id: str | None
    status: int
    latency_ms: float
    ttft_ms: float | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    attempts: int = 1
    error: str | None = None
    request_body: str | None = None
    response_body: str | None = None
    user: str | None = None


# Rows kept in memory while the database is away (about 1 KB each without bodies).
MAX_PENDING = 100_000
COUNT_CAP = 100_000  # a page's matches are counted up to this many ("100,000 or more")
PRUNE_BATCH = 1_000  # rows the retention purge deletes a transaction (SQLite locks all writers)
PRUNE_PAUSE = 0.02  # seconds between its batches, for the writers
PRUNE_EVERY = 3600.0
_SUMS = ["requests", "errors", "tokens_out", "latency_ms_sum", "ttft_ms_sum", "ttft_count"]


_COLUMNS = [column.name for column in requests.columns if column.name != "id"]


def _row(record: RequestRecord) -> dict[str, Any]:
    """The record as a row. A client may send NUL characters (a model name, a body), which
    PostgreSQL's text refuses: they become U+FFFD, so one such request cannot fail the batch
    it is written with."""
    row = dict(record.__dict__)
    for key, value in row.items():
        if isinstance(value, str) and "\x00" in value:
            row[key] = value.replace("\x00", "\ufffd")
    return row


class History:
    def __init__(
        self,
        engine: AsyncEngine,
        retention_days: float,
        on_record: Callable[[RequestRecord], None] = lambda _: None,
    ) -> None:
        self._on_record = on_record
        self._engine = engine
        self._retention = retention_days * 86400
        self._pending: list[RequestRecord] = []
        self._wake = asyncio.Event()
        self._flushing = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0  # rows lost because the database stayed away too long
        # The insert in the driver's own SQL, compiled once and given plain tuples: SQLAlchemy's
        # per-row parameter processing cost 4.7 µs a row on the event loop, this 1.5 µs.
        statement = insert(requests).values({name: bindparam(name) for name in _COLUMNS})
        compiled = statement.compile(dialect=engine.dialect)
        self._insert_sql = str(compiled)
        self._insert_order = compiled.positiontup  # None where the driver takes names
        # Each minute's sums, added to what is there (several routers may share a minute).
        dialect_insert = (postgresql.insert if engine.dialect.name == "postgresql"
                          else sqlite.insert)  # fmt: skip
        upsert = dialect_insert(request_minutes).values(
            {name: bindparam(name) for name in ("minute", *_SUMS)}
        )
        upsert = upsert.on_conflict_do_update(
            index_elements=["minute"],
            set_={name: request_minutes.c[name] + upsert.excluded[name] for name in _SUMS},
        )
        compiled = upsert.compile(dialect=engine.dialect)
        self._minutes_sql = str(compiled)
        self._minutes_order = compiled.positiontup
        self._pruning: asyncio.Task[int] | None = None

    def add(self, record: RequestRecord) -> None:
        self._on_record(record)
        self._pending.append(record)
        if len(self._pending) >= 200:
            self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        for task in (self._task, self._pruning):  # a purge cut short goes on at the next start
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        try:
            await self.flush()
        except Exception:
            log.exception("stopping with %d history rows unwritten", len(self._pending))

    async def flush(self) -> None:
        """Write what is pending. Flushes run one at a time, so a reader that flushes first
        also waits for a batch the background writer is still committing (without the lock
        it could count the history while that batch was in flight, and miss it).

        A batch the database refuses (it is down) goes back to the front of the queue and
        is written when the database returns; past ``MAX_PENDING`` rows the oldest are
        dropped, counted in ``dropped``."""
        async with self._flushing:
            batch, self._pending = self._pending, []
            if not batch:
                return
            try:
                await self._write(batch)
            except Exception as exc:
                refused = isinstance(exc, DBAPIError) and not exc.connection_invalidated
                if refused and await ping(self._engine):
                    # The database is there and refused a row: write the others one by one
                    # and drop what it refuses, rather than holding back all history.
                    await self._write_singly(batch)
                    return
                self._pending = batch + self._pending
                excess = len(self._pending) - MAX_PENDING
                if excess > 0:
                    del self._pending[:excess]
                    self.dropped += excess
                    log.error("request history: %d rows dropped while the database is down",
                              excess)  # fmt: skip
                raise

    async def _write_singly(self, batch: list[RequestRecord]) -> None:
        refused = 0
        for record in batch:
            try:
                await self._write([record])
            except DBAPIError:
                refused += 1
        if refused:
            self.dropped += refused
            log.error("request history: the database refused %d of %d rows; dropped them",
                      refused, len(batch))  # fmt: skip

    async def _write(self, batch: list[RequestRecord]) -> None:
        """The rows and their minutes' sums, in one transaction."""
        async with self._engine.begin() as connection:
            await connection.exec_driver_sql(self._insert_sql, self._params(batch))
            await connection.exec_driver_sql(self._minutes_sql, self._minute_params(batch))

    def _minute_params(
        self, batch: list[RequestRecord]
    ) -> list[tuple[Any, ...]] | list[dict[str, Any]]:
        sums: dict[int, list[float]] = {}
        for record in batch:
            minute = int(record.ts // 60)
            each = sums.get(minute)
            if each is None:
                each = sums[minute] = [0, 0, 0, 0.0, 0.0, 0]
            each[0] += 1
            each[1] += record.status >= 400
            each[2] += record.tokens_out or 0
            each[3] += record.latency_ms
            if record.ttft_ms is not None:
                each[4] += record.ttft_ms
                each[5] += 1
        # In the minutes' order, so that two routers' batches lock shared rows in one order.
        rows = [{"minute": m, **dict(zip(_SUMS, sums[m], strict=True))} for m in sorted(sums)]
        order = self._minutes_order
        if order is None:
            return rows
        return [tuple(row[name] for name in order) for row in rows]

    def _params(self, batch: list[RequestRecord]) -> list[tuple[Any, ...]] | list[dict[str, Any]]:
        order = self._insert_order
        if order is None:
            return [_row(record) for record in batch]
        return [tuple(row[name] for name in order) for row in map(_row, batch)]

    async def _run(self) -> None:
        last_prune = 0.0
        failing = False
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):  # (3.11's wait_for may swallow a cancel)
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
                if time.time() - last_prune > PRUNE_EVERY and not self.pruning:
                    self._pruning = asyncio.create_task(self._prune_beside())
                    last_prune = time.time()
            except Exception as exc:  # the history must never take the router down
                if not failing:  # once per outage, not twice a second
                    log.exception("writing request history failed; keeping the rows")
                failing = True
                log.debug("history still not written: %s", exc)
            else:
                if failing:
                    log.info("request history written again")
                failing = False

    @property
    def pruning(self) -> bool:
        return self._pruning is not None and not self._pruning.done()

    async def _prune_beside(self) -> int:
        """The purge as a task beside the writes: a failure is logged (by ``prune``) and
        tried again at the next round."""
        with contextlib.suppress(Exception):
            return await self.prune()
        return 0

    async def prune(self) -> int:
        """Deletes what is past the retention, ``PRUNE_BATCH`` rows a transaction: one delete
        of millions of rows would hold SQLite's write lock (and every writer) for minutes."""
        cutoff = time.time() - self._retention
        removed = 0
        try:
            while True:
                doomed = (select(requests.c.id).where(requests.c.ts < cutoff)
                          .limit(PRUNE_BATCH).scalar_subquery())  # fmt: skip
                async with self._engine.begin() as connection:
                    result = await connection.execute(
                        delete(requests).where(requests.c.id.in_(doomed))
                    )
                removed += int(result.rowcount or 0)
                if (result.rowcount or 0) < PRUNE_BATCH:
                    break
                await asyncio.sleep(PRUNE_PAUSE)
            async with self._engine.begin() as connection:
                await connection.execute(
                    delete(request_minutes).where(request_minutes.c.minute < cutoff // 60)
                )
        except Exception:
            log.exception("pruning the request history failed after %d rows", removed)
            raise
        if removed:
            log.info("request history: %d rows past the retention deleted", removed)
        return removed

    async def query(
        self, filters: HistoryFilter, *, limit: int = 100, offset: int = 0
    ) -> tuple[int, list[dict[str, Any]]]:
        """(rows matching, the page of them), newest first. The count stops past
        ``COUNT_CAP``: more than that many is ``COUNT_CAP + 1`` (counting all of a large
        history would read all of it)."""
        await self.flush()  # what was just served is visible at once
        where = filters.where()
        matching = select(requests.c.id).where(where).limit(COUNT_CAP + 1).subquery()
        async with self._engine.connect() as connection:
            total = (
                await connection.execute(select(func.count()).select_from(matching))
            ).scalar_one()
            rows = await connection.execute(
                select(requests)
                .where(where)
                .order_by(requests.c.ts.desc(), requests.c.id.desc())
                .limit(limit)
                .offset(offset)
            )
            return int(total), [_plain(row) for row in rows]

    async def get(self, row_id: int) -> dict[str, Any]:
        await self.flush()
        async with self._engine.connect() as connection:
            row = (
                await connection.execute(select(requests).where(requests.c.id == row_id))
            ).first()
        if row is None:
            raise NotFound(f"no request with id {row_id} in the history", code="request_not_found")
        return _plain(row)

    async def export(
        self, filters: HistoryFilter, limit: int, page: int = 1000
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """Up to ``limit`` matching rows, newest first, a page at a time (bounded memory),
        without the bodies: a page of bodies could be a gigabyte."""
        await self.flush()
        columns = [c for c in requests.c if c.name not in ("request_body", "response_body")]
        where = filters.where()
        before: tuple[float, int] | None = None
        sent = 0
        while sent < limit:
            query = select(*columns).where(where)
            if before is not None:  # keyset paging: stable while new rows arrive
                query = query.where(
                    or_(requests.c.ts < before[0],
                        and_(requests.c.ts == before[0], requests.c.id < before[1]))
                )  # fmt: skip
            query = query.order_by(requests.c.ts.desc(), requests.c.id.desc())
            async with self._engine.connect() as connection:
                rows = [
                    _plain(r)
                    for r in await connection.execute(query.limit(min(page, limit - sent)))
                ]
            if not rows:
                return
            sent += len(rows)
            before = (rows[-1]["ts"], rows[-1]["id"])
            yield rows

    async def summary(self, since: float) -> dict[str, Any]:
        """Counts and means of the requests since ``since`` (the overview's cards)."""
        await self.flush()
        failed = case((requests.c.status >= 400, 1), else_=0)
        async with self._engine.connect() as connection:
            row = (
                await connection.execute(
                    select(
                        func.count(), func.sum(failed), func.avg(requests.c.latency_ms),
                        func.avg(requests.c.ttft_ms), func.sum(requests.c.tokens_out),
                    ).where(requests.c.ts >= since)
                )
            ).one()  # fmt: skip
        count = int(row[0] or 0)
        return {
            "requests": count,
            "errors": int(row[1] or 0),
            "success_rate": None if count == 0 else 1 - int(row[1] or 0) / count,
            "latency_ms": row[2],
            "ttft_ms": row[3],
            "tokens_out": int(row[4] or 0),
        }

    async def series(self, since: float, bucket: int = 60) -> list[dict[str, Any]]:
        """Requests, errors and generated tokens per ``bucket`` seconds (a whole number of
        minutes) since ``since``, from the per-minute sums."""
        await self.flush()
        minutes = request_minutes.c
        async with self._engine.connect() as connection:
            rows = await connection.execute(
                select(minutes.minute, minutes.requests, minutes.errors, minutes.tokens_out)
                .where(minutes.minute >= since // 60).order_by(minutes.minute)
            )  # fmt: skip
            slots: dict[int, dict[str, Any]] = {}
            for minute, count, errors, tokens in rows:
                ts = minute * 60 // bucket * bucket
                slot = slots.setdefault(ts, {"ts": ts, "requests": 0, "errors": 0,
                                             "tokens_out": 0})  # fmt: skip
                slot["requests"] += int(count)
                slot["errors"] += int(errors)
                slot["tokens_out"] += int(tokens)
            return list(slots.values())


@dataclass(frozen=True)
class HistoryFilter:
    """Which rows: every field that is set must match."""

    model: str | None = None
    node_id: str | None = None
    key_id: str | None = None
    user: str | None = None
    status: int | None = None
    since: float | None = None
    until: float | None = None

    def where(self) -> ColumnElement[bool]:
        conditions = []
        if self.model is not None:
            conditions.append(requests.c.model == self.model)
        if self.node_id is not None:
            conditions.append(requests.c.node_id == self.node_id)
        if self.key_id is not None:
            conditions.append(requests.c.key_id == self.key_id)
        if self.user is not None:
            conditions.append(requests.c.user == self.user)
        if self.status is not None:
            conditions.append(requests.c.status == self.status)
        if self.since is not None:
            conditions.append(requests.c.ts >= self.since)
        if self.until is not None:
            conditions.append(requests.c.ts < self.until)
        return and_(True, *conditions)


def _plain(row: Any) -> dict[str, Any]:
    # Column names come back as quoted_name (a str subclass); JSON encoders want str.
    return {str(k): v for k, v in row._mapping.items()}
