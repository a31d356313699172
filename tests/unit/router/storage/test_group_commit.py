"""Registrations that arrive together share a transaction; one bad write fails alone."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import event, insert, select

from llmlb.router.storage.db import GroupCommit, api_keys, open_database


def key_row(key_id: str, secret_hash: str) -> dict[str, object]:
    return {"id": key_id, "name": key_id, "scopes": "api", "secret_hash": secret_hash,
            "prefix": "x", "created_at": 0.0}  # fmt: skip


async def test_a_burst_shares_transactions(tmp_path: Path, database_url: str) -> None:
    engine = await open_database(database_url)
    commits = 0

    def count(*_: object) -> None:
        nonlocal commits
        commits += 1

    event.listen(engine.sync_engine, "commit", count)
    writes = GroupCommit(engine)
    await asyncio.gather(*(writes.execute(insert(api_keys), key_row(f"k{i}", f"h{i}"))
                           for i in range(20)))  # fmt: skip
    assert commits <= 2  # the first write alone, the 19 that came meanwhile together
    async with engine.connect() as connection:
        assert len(list(await connection.execute(select(api_keys.c.id)))) == 20
    await engine.dispose()


async def test_a_bad_write_fails_only_its_caller(tmp_path: Path, database_url: str) -> None:
    engine = await open_database(database_url)
    writes = GroupCommit(engine)
    rows = [key_row(f"k{i}", f"h{i}") for i in range(5)]
    rows.insert(3, key_row("dup", "h1"))  # the same secret hash as k1: a unique violation
    results = await asyncio.gather(
        *(writes.execute(insert(api_keys), row) for row in rows), return_exceptions=True
    )
    assert [type(r).__name__ for r in results] == ["NoneType"] * 3 + ["IntegrityError"] + [
        "NoneType"] * 2  # fmt: skip
    async with engine.connect() as connection:
        stored = {row.id for row in await connection.execute(select(api_keys.c.id))}
    assert stored == {f"k{i}" for i in range(5)}
    await engine.dispose()


async def test_a_caller_that_leaves_does_not_lose_the_write(
    tmp_path: Path, database_url: str
) -> None:
    engine = await open_database(database_url)
    writes = GroupCommit(engine)
    leaving = asyncio.create_task(writes.execute(insert(api_keys), key_row("k", "h")))
    await asyncio.sleep(0)
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    await writes.execute(insert(api_keys), key_row("k2", "h2"))
    async with engine.connect() as connection:
        stored = {row.id for row in await connection.execute(select(api_keys.c.id))}
    assert stored == {"k", "k2"}
    await engine.dispose()
