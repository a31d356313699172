"""The request history at scale: 10 million rows on SQLite and on PostgreSQL.

For each database: the rows are written straight into a database at the schema's head (30
days of requests from 16 nodes, 8 models, 50 keys, 10 users, 2% errors), then a real router
(``llmlb serve``) on that database answers what the dashboard and the API ask: the overview,
a day of per-minute figures, ``/api/requests`` unfiltered and with each filter, and the first
page of an export; each timed 5 times after one untimed call (medians and the slowest). Then,
in this process, the history's own writer (``History``) takes 2,000 rows a second: first
alone, then while the retention purge deletes the oldest tenth of the rows, each batch's
commit timed; and for ``SUSTAIN`` seconds, to show that it keeps up.

    .venv/bin/python -m bench history [--quick]
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.procs import ROOT
from bench.report import Report
from llmlb.router.storage.db import open_database, requests
from llmlb.router.telemetry import history as history_module
from llmlb.router.telemetry.history import History, RequestRecord

sys.path.insert(0, str(ROOT))
from tests.postgres import PostgresServer
from tests.support import free_port, start_router

DAYS = 30
NODES = [str(uuid.UUID(int=i + 1)) for i in range(16)]
MODELS = [f"model-{i}" for i in range(8)]
KEYS = [str(uuid.UUID(int=1000 + i)) for i in range(50)]
USERS = [f"user-{i}" for i in range(10)]
RATE = 2000  # rows a second the writer takes
COLUMNS = ("ts", "request_id", "key_id", "user", "endpoint", "model", "node_id", "status",
           "latency_ms", "ttft_ms", "tokens_in", "tokens_out", "attempts")  # fmt: skip
SECONDARY = ("ix_requests_model_ts", "ix_requests_node_ts", "ix_requests_key_ts",
             "ix_requests_user_ts", "ix_requests_status_ts")  # fmt: skip


def _status(chance: random.Random) -> int:
    roll = chance.random()
    return 500 if roll < 0.01 else 429 if roll < 0.02 else 200


def rows(count: int, end: float) -> Iterator[tuple[Any, ...]]:
    """``count`` rows over the ``DAYS`` days before ``end``, oldest first."""
    chance = random.Random(7)
    start = end - DAYS * 86400
    step = (end - start) / count
    for index in range(count):
        yield (start + index * step, f"req-{index}", chance.choice(KEYS),
               USERS[index % 10] if index % 7 == 0 else None, "chat", chance.choice(MODELS),
               chance.choice(NODES), _status(chance), 50 + chance.random() * 500,
               20 + chance.random() * 100, 100, 32, 1)  # fmt: skip


async def fill_sqlite(path: Path, count: int) -> float:
    """The schema at head, then the rows with the secondary indexes built after; seconds."""
    engine = await open_database(f"sqlite+aiosqlite:///{path}")
    await engine.dispose()
    started = time.perf_counter()
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA synchronous=OFF")
    for name in SECONDARY:
        connection.execute(f"DROP INDEX {name}")
    marks = ",".join("?" * len(COLUMNS))
    quoted = ",".join(f'"{c}"' for c in COLUMNS)
    connection.executemany(f"INSERT INTO requests ({quoted}) VALUES ({marks})",
                           rows(count, time.time()))  # fmt: skip
    connection.commit()
    connection.close()
    engine = await open_database(f"sqlite+aiosqlite:///{path}")
    async with engine.begin() as db:
        await _index_and_sum(db, "CAST(ts / 60 AS INTEGER)")
    await engine.dispose()
    return time.perf_counter() - started


async def fill_postgres(url: str, count: int) -> float:
    engine = await open_database(url)
    started = time.perf_counter()
    end = time.time()
    async with engine.begin() as db:
        for name in SECONDARY:
            await db.execute(text(f"DROP INDEX {name}"))
        # The same shape as ``rows``, made by the server (a client would take minutes).
        await db.execute(text(
            "INSERT INTO requests (ts, request_id, key_id, \"user\", endpoint, model, node_id, "
            "status, latency_ms, ttft_ms, tokens_in, tokens_out, attempts) "
            "SELECT CAST(:start AS float8) + i * CAST(:step AS float8), 'req-' || i, "
            "(CAST(:keys AS text[]))[1 + (i * 7919) % 50], "
            "CASE WHEN i % 7 = 0 THEN 'user-' || (i % 10) END, 'chat', "
            "'model-' || ((i * 104729) % 8), (CAST(:nodes AS text[]))[1 + (i * 1299709) % 16], "
            "CASE WHEN i % 100 = 3 THEN 500 WHEN i % 100 = 7 THEN 429 ELSE 200 END, "
            "50 + random() * 500, 20 + random() * 100, 100, 32, 1 "
            "FROM generate_series(0, CAST(:count AS bigint) - 1) AS i"
        ), {"start": end - DAYS * 86400, "step": DAYS * 86400 / count, "keys": KEYS,
            "nodes": NODES, "count": count})  # fmt: skip
        await _index_and_sum(db, "floor(ts / 60)")
    async with engine.connect() as db:
        await (await db.execution_options(isolation_level="AUTOCOMMIT")).execute(
            text("VACUUM ANALYZE requests")
        )
    await engine.dispose()
    return time.perf_counter() - started


async def _index_and_sum(db: Any, minute: str) -> None:
    """The secondary indexes, and the last day's per-minute sums (as migration 0013 makes)."""
    for index in requests.indexes:
        if index.name in SECONDARY:
            columns = ", ".join(f'"{c.name}"' for c in index.columns)
            await db.execute(text(f"CREATE INDEX {index.name} ON requests ({columns})"))
    await db.execute(text(
        "INSERT INTO request_minutes (minute, requests, errors, tokens_out, latency_ms_sum, "
        "ttft_ms_sum, ttft_count) "
        f"SELECT {minute}, count(*), sum(CASE WHEN status >= 400 THEN 1 ELSE 0 END), "
        "coalesce(sum(tokens_out), 0), sum(latency_ms), coalesce(sum(ttft_ms), 0), count(ttft_ms) "
        f"FROM requests WHERE ts >= :since GROUP BY {minute}"
    ), {"since": (time.time() // 60 - 1440) * 60})  # fmt: skip
    await db.execute(text("ANALYZE"))


def api_timings(url: str, home: Path) -> list[tuple[str, float, float]]:
    """(what, median ms, slowest ms) for each of the dashboard's and the API's reads."""
    router = start_router(home, home, "--no-auth", "--log-level", "warning", port=free_port(),
                          env={"LLMLB_DATABASE_URL": url,
                               # its purge would otherwise delete all but its default 7 days
                               "LLMLB_HISTORY_DAYS": str(DAYS * 2)})  # fmt: skip
    day = time.time() - 86400
    asks: dict[str, tuple[str, dict[str, str | int | float]]] = {
        "overview": ("/api/stats/overview", {}),
        "series, a day by the minute": ("/api/stats/series", {"minutes": 1440}),
        "requests, no filter": ("/api/requests", {}),
        "requests, model": ("/api/requests", {"model": MODELS[3]}),
        "requests, node": ("/api/requests", {"node_id": NODES[5]}),
        "requests, key": ("/api/requests", {"key_id": KEYS[17]}),
        "requests, user": ("/api/requests", {"user": USERS[4]}),
        "requests, status 500": ("/api/requests", {"status": 500}),
        "requests, since a day": ("/api/requests", {"since": day}),
        "requests, a day 10 days ago": ("/api/requests", {"since": day - 10 * 86400,
                                                          "until": day - 9 * 86400}),
        "requests, model + status 500": ("/api/requests", {"model": MODELS[1], "status": 500}),
        "requests, page 100 (offset 9,900)": ("/api/requests", {"offset": 9900}),
    }  # fmt: skip
    timings = []
    try:
        with httpx.Client(base_url=router.url, timeout=120) as http:
            for what, (path, params) in asks.items():
                times = []
                for attempt in range(6):
                    started = time.perf_counter()
                    http.get(path, params=params).raise_for_status()
                    if attempt:  # the first warms the cache
                        times.append((time.perf_counter() - started) * 1000)
                timings.append((what, statistics.median(times), max(times)))
            times = []
            for attempt in range(6):
                started = time.perf_counter()
                with http.stream("GET", "/api/requests/export",
                                 params={"format": "json", "limit": 1000}) as answer:  # fmt: skip
                    answer.raise_for_status()
                    lines = sum(1 for _ in answer.iter_lines())
                assert lines >= 1000, lines
                if attempt:
                    times.append((time.perf_counter() - started) * 1000)
            timings.append(("export, first 1,000 rows", statistics.median(times), max(times)))
    finally:
        router.stop()
    return timings


def _record(index: int, ts: float) -> RequestRecord:
    return RequestRecord(ts=ts, request_id=f"new-{index}", key_id=KEYS[index % 50],
                         endpoint="chat", model=MODELS[index % 8], node_id=NODES[index % 16],
                         status=200, latency_ms=80.0, ttft_ms=30.0, tokens_in=100,
                         tokens_out=32)  # fmt: skip


async def timed_writes(engine: AsyncEngine, seconds: float, purge: bool) -> dict[str, float]:
    """2,000 rows a second through ``History`` for ``seconds`` (a batch every 0.1 s, its
    commit timed); with ``purge``, the retention purge of the oldest tenth runs meanwhile."""
    history = History(engine, retention_days=DAYS * 0.9)
    commits: list[float] = []
    purge_task = asyncio.create_task(history.prune()) if purge else None
    started = time.perf_counter()
    written = 0
    while time.perf_counter() - started < seconds or (purge_task and not purge_task.done()):
        tick = time.perf_counter()
        for _ in range(RATE // 10):
            history.add(_record(written, time.time()))
            written += 1
        await history.flush()
        commits.append((time.perf_counter() - tick) * 1000)
        await asyncio.sleep(max(0.0, 0.1 - (time.perf_counter() - tick)))
    wall = time.perf_counter() - started
    purged = await purge_task if purge_task else 0
    ordered = sorted(commits)
    return {"rows": written, "rows_per_s": written / wall, "seconds": wall,
            "p50_ms": statistics.median(commits), "p99_ms": ordered[int(0.99 * (len(ordered) - 1))],
            "purged": purged}  # fmt: skip


async def the_old_way(url: str) -> list[tuple[str, float, float]]:
    """What the history did before it was built for scale, on the same rows: an exact count
    for every page, and the day's series grouped from the requests themselves."""
    engine = await open_database(url)
    minute = "floor(ts / 60)" if engine.dialect.name == "postgresql" else "CAST(ts / 60 AS INTEGER)"
    queries = {
        "before: exact count for a page": "SELECT count(*) FROM requests",
        "before: a day's series from the rows": (
            f"SELECT {minute}, count(*), sum(CASE WHEN status >= 400 THEN 1 ELSE 0 END), "
            f"sum(tokens_out) FROM requests WHERE ts >= {time.time() - 86400} "
            f"GROUP BY {minute} ORDER BY 1"),
    }  # fmt: skip
    timings = []
    try:
        for what, sql in queries.items():
            times = []
            for attempt in range(4):
                started = time.perf_counter()
                async with engine.connect() as connection:
                    (await connection.execute(text(sql))).all()
                if attempt:
                    times.append((time.perf_counter() - started) * 1000)
            timings.append((what, statistics.median(times), max(times)))
    finally:
        await engine.dispose()
    return timings


async def writes(url: str, quick: bool) -> dict[str, dict[str, float]]:
    engine = await open_database(url)
    try:
        alone = await timed_writes(engine, 10 if quick else 30, purge=False)
        purging = await timed_writes(engine, 1, purge=True)
        sustained = await timed_writes(engine, SUSTAIN_QUICK if quick else SUSTAIN, purge=False)
    finally:
        await engine.dispose()
    return {"alone": alone, "purging": purging, "sustained": sustained}


SUSTAIN = 600.0
SUSTAIN_QUICK = 20.0


def run(report: Report, quick: bool) -> None:
    count = 1_000_000 if quick else 10_000_000
    history_module.PRUNE_EVERY = float("inf")  # the purge runs when this bench says
    report.section(
        "Request history at scale",
        f"{count:,} rows over {DAYS} days (16 nodes, 8 models, 50 keys, 10 users, 2% errors), "
        "written straight into the database at the schema's head; a real router on it. Reads: "
        "5 timed calls after one untimed, median and slowest, ms, over HTTP from this process. "
        f"Writes: `History` in this process at {RATE:,} rows/s (a batch every 0.1 s, each "
        "commit timed), alone, while the retention purge deletes the oldest tenth, and "
        f"sustained for {SUSTAIN_QUICK if quick else SUSTAIN:g} s.",
    )
    results: dict[str, tuple[float, list[tuple[str, float, float]], dict[str, dict[str, float]]]]
    results = {}
    with tempfile.TemporaryDirectory(prefix="llmlb-bench-history-") as scratch:
        folder = Path(scratch)
        path = folder / "history.db"
        filled = asyncio.run(fill_sqlite(path, count))
        url = f"sqlite+aiosqlite:///{path}"
        (folder / "sqlite").mkdir()
        reads = api_timings(url, folder / "sqlite") + asyncio.run(the_old_way(url))
        results["SQLite"] = (filled, reads, asyncio.run(writes(url, quick)))
        path.unlink()
        server = PostgresServer().start()
        try:
            url = server.new_database()
            filled = asyncio.run(fill_postgres(url, count))
            (folder / "postgres").mkdir()
            reads = api_timings(url, folder / "postgres") + asyncio.run(the_old_way(url))
            results["PostgreSQL"] = (filled, reads, asyncio.run(writes(url, quick)))
        finally:
            server.stop()
    names = list(results)
    report.table(["read", *(f"{n} median" for n in names), *(f"{n} slowest" for n in names)],
                 [[what, *(results[n][1][i][1] for n in names),
                   *(results[n][1][i][2] for n in names)]
                  for i, (what, _, _) in enumerate(results[names[0]][1])])  # fmt: skip
    report.table(["writes", *names], [
        [f"{phase}: {key}", *(results[n][2][phase][key] for n in names)]
        for phase in ("alone", "purging", "sustained")
        for key in ("rows_per_s", "p50_ms", "p99_ms", "seconds", "purged")
        if not (key == "purged" and phase != "purging")
    ])  # fmt: skip
    ratios = {n: results[n][2]["purging"]["p99_ms"] / results[n][2]["alone"]["p99_ms"]
              for n in names}  # fmt: skip
    report.add("Filling took " + ", ".join(f"{n} {results[n][0]:.0f} s" for n in names) + ". "
               "A write's p99 while purging against alone: "
               + ", ".join(f"{n} {ratio:.2f}×" for n, ratio in ratios.items()) + ".")  # fmt: skip


if __name__ == "__main__":
    from bench.__main__ import main

    main(["history", *sys.argv[1:]])
