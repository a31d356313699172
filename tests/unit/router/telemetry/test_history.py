"""Request history on a real SQLite file and PostgreSQL: filters, paging, retention, the
per-minute sums, the capped count, the batched purge."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import create_async_engine

from llmlb.router.storage.db import open_database, requests
from llmlb.router.storage.schema import migrate
from llmlb.router.telemetry import history as history_module
from llmlb.router.telemetry.history import History, HistoryFilter, RequestRecord


def record(
    ts: float, model: str = "m", status: int = 200, node: str | None = "n1"
) -> RequestRecord:
    return RequestRecord(ts=ts, request_id=f"r{ts}", key_id="k", endpoint="chat", model=model,
                         node_id=node, status=status, latency_ms=1.0)  # fmt: skip


async def test_filters_paging_and_retention(tmp_path: Path, database_url: str) -> None:
    engine = await open_database(database_url)
    history = History(engine, retention_days=7)
    now = time.time()
    history.add(record(now - 8 * 86400))  # older than the retention
    for offset in range(5):
        history.add(record(now - offset, model="a" if offset % 2 else "b"))
    history.add(record(now - 10, status=503, node=None))
    total, rows = await history.query(HistoryFilter(), limit=2)
    assert total == 7
    assert [r["ts"] for r in rows] == [now, now - 1]  # newest first
    assert (await history.query(HistoryFilter(model="a")))[0] == 2
    assert (await history.query(HistoryFilter(status=503)))[1][0]["node_id"] is None
    assert (await history.query(HistoryFilter(since=now - 3)))[0] == 4
    assert (await history.query(HistoryFilter(), limit=2, offset=6))[1][0]["ts"] == now - 8 * 86400
    assert await history.prune() == 1
    assert (await history.query(HistoryFilter()))[0] == 6
    await engine.dispose()


async def test_the_series_comes_from_each_minutes_sums_across_routers(
    database_url: str,
) -> None:
    """Two routers on one database write requests of the same minutes: the per-minute figures
    the dashboard reads add both up, errors and tokens included."""
    engine = await open_database(database_url)
    first, second = History(engine, retention_days=7), History(engine, retention_days=7)
    minute = (time.time() // 60 - 3) * 60
    for index in range(5):
        first.add(record(minute + index, status=500 if index == 0 else 200))
        second.add(record(minute + 60 + index, status=200))
    second.add(record(minute + 30, status=429))
    for history in (first, second):
        history.add(replace(record(minute + 61), tokens_out=7))
        await history.flush()
    series = await first.series(minute)
    assert series == [
        {"ts": minute, "requests": 6, "errors": 2, "tokens_out": 0},
        {"ts": minute + 60, "requests": 7, "errors": 0, "tokens_out": 14},
    ]
    two_minutes = await first.series(minute, bucket=120)
    assert sum(s["requests"] for s in two_minutes) == 13
    await engine.dispose()


async def test_the_purge_deletes_in_batches_and_the_minutes_with_them(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(history_module, "PRUNE_BATCH", 3)
    engine = await open_database(database_url)
    history = History(engine, retention_days=1)
    old = (time.time() // 60 - 2 * 1440) * 60  # a minute's start: the ten rows share it
    for index in range(10):
        history.add(record(old + index))
    history.add(record(time.time()))
    await history.flush()
    assert len(await history.series(old)) == 2  # the old minute and this one
    assert await history.prune() == 10
    assert (await history.query(HistoryFilter()))[0] == 1
    assert [s["requests"] for s in await history.series(old)] == [1]
    await engine.dispose()


async def test_a_large_history_counts_its_matches_only_up_to_the_cap(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(history_module, "COUNT_CAP", 4)
    engine = await open_database(database_url)
    history = History(engine, retention_days=7)
    now = time.time()
    for index in range(9):
        history.add(record(now - index, model="a" if index < 3 else "b"))
    total, rows = await history.query(HistoryFilter(), limit=2)
    assert total == 5 and len(rows) == 2  # more than the cap: cap + 1
    assert (await history.query(HistoryFilter(model="a")))[0] == 3  # under it: exact
    await engine.dispose()


async def test_the_upgrade_sums_the_last_day_of_an_older_history(database_url: str) -> None:
    engine = create_async_engine(database_url)
    minute = (time.time() // 60 - 5) * 60
    async with engine.begin() as connection:
        await connection.run_sync(migrate, "0012")
        for ts, status in ((minute + 1, 200), (minute + 2, 502), (time.time() - 3 * 86400, 200)):
            await connection.execute(insert(requests).values(
                ts=ts, request_id="r", endpoint="chat", model="m", status=status, latency_ms=1.0,
                tokens_out=5,
            ))  # fmt: skip
    await engine.dispose()
    engine = await open_database(database_url)
    series = await History(engine, retention_days=7).series(minute - 86400 * 4)
    assert series == [{"ts": minute, "requests": 2, "errors": 1, "tokens_out": 10}]
    await engine.dispose()
