"""The key store keeps in step with the table by revision: making a key reads no other key,
and a router takes in another's change by reading that change alone."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert

from llmlb.router.access import keys as keys_module
from llmlb.router.access.keys import ApiKey, KeyStore, hash_secret
from llmlb.router.storage.db import api_keys, open_database

MANY = 5_500


async def test_a_change_costs_the_same_with_thousands_of_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = await open_database(f"sqlite+aiosqlite:///{tmp_path / 'keys.db'}")
    now = time.time()
    async with engine.begin() as connection:
        await connection.execute(insert(api_keys), [
            {"id": f"k{i}", "name": f"k{i}", "scopes": "api", "secret_hash": hash_secret(f"s{i}"),
             "prefix": "llmlb_x", "created_at": now}
            for i in range(MANY)
        ])  # fmt: skip
    here, there = KeyStore(engine), KeyStore(engine)
    await here.sync()
    await there.sync()
    assert await there.verify("s42") is not None  # the keys made before are all known

    read: list[str] = []
    original = keys_module._from_row

    def counted(row: Any) -> ApiKey:
        read.append(row.id)
        return original(row)

    monkeypatch.setattr(keys_module, "_from_row", counted)
    made, secret = await here.create("new", ["api"])
    assert read == []  # making a key read no key (it read all 5,501 before: 90 ms of CPU)
    assert await here.verify(secret) is not None  # and this router knows it at once

    await there.sync()
    assert read == [made.id]  # the other router read the one key that changed
    assert await there.verify(secret) is not None
    await here.revoke(made.id)
    read.clear()
    await there.sync()
    assert read == [made.id]
    assert await there.verify(secret) is None
    assert await there.spent(secret)
    read.clear()
    await there.sync()  # nothing changed: nothing read
    assert read == []
    await engine.dispose()


async def test_a_secret_made_elsewhere_is_found_by_the_request_that_brings_it(
    tmp_path: Path,
) -> None:
    engine = await open_database(f"sqlite+aiosqlite:///{tmp_path / 'keys.db'}")
    here, there = KeyStore(engine), KeyStore(engine)
    await there.sync()
    _, secret = await here.create("elsewhere", ["api"])
    assert await there.verify(secret) is not None  # a miss syncs, then looks again
    assert await there.verify("llmlb_not-a-key") is None
    await engine.dispose()


async def test_a_caller_cancelled_as_the_sync_ends_is_still_cancelled(tmp_path: Path) -> None:
    """Python 3.11's ``wait_for`` returns the result, swallowing the cancellation, when the
    awaited sync ends in the same turn as the cancel: the router's key sync loop then never
    stopped, and its shutdown hung (seen as a 300 s test teardown)."""
    engine = await open_database(f"sqlite+aiosqlite:///{tmp_path / 'keys.db'}")
    store = KeyStore(engine)
    await store.sync()
    for _ in range(20):
        ending: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        store._syncing = ending  # type: ignore[assignment]  # a sync in flight
        caller = asyncio.create_task(store.sync(wait=True))
        await asyncio.sleep(0)  # the caller waits for it
        ending.set_result(None)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
    await engine.dispose()
