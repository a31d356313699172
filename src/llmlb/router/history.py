"""Request history: one row per request, written in batches off the request path."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from llmlb.router.db import requests

log = logging.getLogger(__name__)


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


class History:
    def __init__(self, engine: AsyncEngine, retention_days: float) -> None:
        self._engine = engine
        self._retention = retention_days * 86400
        self._pending: list[RequestRecord] = []
        self._wake = asyncio.Event()
        self._flushing = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def add(self, record: RequestRecord) -> None:
        self._pending.append(record)
        if len(self._pending) >= 200:
            self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()

    async def flush(self) -> None:
        """Write what is pending. Flushes run one at a time, so a reader that flushes first
        also waits for a batch the background writer is still committing (without the lock
        it could count the history while that batch was in flight, and miss it)."""
        async with self._flushing:
            batch, self._pending = self._pending, []
            if batch:
                async with self._engine.begin() as connection:
                    await connection.execute(insert(requests), [dict(r.__dict__) for r in batch])

    async def _run(self) -> None:
        last_prune = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 0.5)
            self._wake.clear()
            try:
                await self.flush()
                if time.time() - last_prune > 3600:
                    await self.prune()
                    last_prune = time.time()
            except Exception:  # the history must never take the router down
                log.exception("writing request history failed")

    async def prune(self) -> int:
        cutoff = time.time() - self._retention
        async with self._engine.begin() as connection:
            result = await connection.execute(delete(requests).where(requests.c.ts < cutoff))
        return int(result.rowcount or 0)

    async def query(
        self,
        *,
        model: str | None = None,
        node_id: str | None = None,
        key_id: str | None = None,
        status: int | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[int, list[dict[str, Any]]]:
        await self.flush()  # what was just served is visible at once
        conditions = []
        if model is not None:
            conditions.append(requests.c.model == model)
        if node_id is not None:
            conditions.append(requests.c.node_id == node_id)
        if key_id is not None:
            conditions.append(requests.c.key_id == key_id)
        if status is not None:
            conditions.append(requests.c.status == status)
        if since is not None:
            conditions.append(requests.c.ts >= since)
        if until is not None:
            conditions.append(requests.c.ts < until)
        where = and_(True, *conditions)
        async with self._engine.connect() as connection:
            total = (
                await connection.execute(select(func.count()).select_from(requests).where(where))
            ).scalar_one()
            rows = await connection.execute(
                select(requests)
                .where(where)
                .order_by(requests.c.ts.desc(), requests.c.id.desc())
                .limit(limit)
                .offset(offset)
            )
            # Column names come back as quoted_name (a str subclass); JSON encoders want str.
            return int(total), [{str(k): v for k, v in row._mapping.items()} for row in rows]
