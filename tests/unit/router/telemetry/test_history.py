"""Request history on a real SQLite file: filters, paging, retention."""

from __future__ import annotations

import time
from pathlib import Path

from llmlb.router.storage.db import open_database
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
