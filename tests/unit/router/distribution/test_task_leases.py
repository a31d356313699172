"""Task leases between routers whose wall clocks differ (real database)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from sqlalchemy import insert, update

from llmlb.router.distribution.tasks import TaskManager
from llmlb.router.storage.db import open_database, tasks
from llmlb.router.telemetry.events import EventBus

LEASE = 0.3


async def test_a_renewed_lease_is_never_taken_over_whatever_its_clock_says(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The owner's clock is an hour behind, so every lease it writes looks long expired to
    this router. While it renews them this router takes nothing; once it stops, the task is
    taken over after a lease's worth of this router's own time."""
    engine = await open_database(database_url)
    here = TaskManager(
        engine, None, None, None, EventBus(),  # type: ignore[arg-type]
        max_concurrent=1, owner="here", lease_seconds=LEASE,
    )  # fmt: skip
    launched: list[str] = []
    monkeypatch.setattr(here, "_launch", lambda task: launched.append(task["id"]))
    behind = time.time() - 3600
    task: dict[str, Any] = {
        "id": "task-1", "kind": "node_pull", "model": "m", "node_id": "n", "state": "in_progress",
        "bytes_done": 0, "speed": 0.0, "created_at": behind, "updated_at": behind,
        "owner": "there", "lease_until": behind + LEASE,
    }  # fmt: skip
    async with engine.begin() as connection:
        await connection.execute(insert(tasks).values(**task))

    renewed_until = time.monotonic() + 4 * LEASE
    while time.monotonic() < renewed_until:  # "there" renews, as its lease loop does
        await here.resume()
        assert launched == []
        behind += LEASE / 3
        async with engine.begin() as connection:
            await connection.execute(update(tasks).values(lease_until=behind + LEASE))
        await asyncio.sleep(LEASE / 3)

    stopped = time.monotonic()  # "there" died
    while not launched and time.monotonic() - stopped < 30 * LEASE:
        await here.resume()
        await asyncio.sleep(LEASE / 10)
    assert launched == ["task-1"]
    assert time.monotonic() - stopped >= LEASE
    await engine.dispose()
