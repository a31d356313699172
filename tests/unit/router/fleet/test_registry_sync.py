"""The registry's periodic re-read of the node table, racing registrations (real SQLite)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from llmlb.common.wire import Device, RegisterRequest
from llmlb.router.fleet.registry import Registry
from llmlb.router.storage.db import nodes, open_database

SETTINGS: dict[str, Any] = dict(
    heartbeat_interval=10, allow_cpu_nodes=False, require_approval=False,
    node_max_concurrency=None,
)  # fmt: skip
GPU = Device(kind="cuda", name="GPU", memory_total=8 << 30, memory_free=8 << 30)


def request(name: str) -> RegisterRequest:
    return RegisterRequest(name=name, base_url=f"http://{name}:1", devices=[GPU])


class RegistersDuringSelect:
    """An engine whose reads run ``during`` after the SELECT has returned its rows."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self.during: Callable[[], Awaitable[Any]] | None = None

    def begin(self) -> Any:
        return self._engine.begin()

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[Any]:
        async with self._engine.connect() as connection:
            yield _Racing(connection, self)


class _Racing:
    def __init__(self, connection: Any, owner: RegistersDuringSelect) -> None:
        self._connection = connection
        self._owner = owner

    async def execute(self, statement: Any) -> list[Any]:
        rows = list(await self._connection.execute(statement))
        during, self._owner.during = self._owner.during, None
        if during is not None:
            await during()
        return rows


async def racing_registry(database_url: str) -> tuple[AsyncEngine, RegistersDuringSelect, Registry]:
    """A registry whose table reads run ``racing.during`` right after their SELECT."""
    engine = await open_database(database_url)
    racing = RegistersDuringSelect(engine)
    return engine, racing, Registry(racing, **SETTINGS)  # type: ignore[arg-type]


async def test_a_node_registering_while_the_table_is_read_is_kept(
    tmp_path: Path, database_url: str
) -> None:
    engine, racing, registry = await racing_registry(database_url)
    await registry.register(request("before"))
    racing.during = lambda: registry.register(request("during"))
    await registry.load()
    assert [n.name for n in registry.all()] == ["before", "during"]
    await registry.load()  # the next sync sees it in the table too
    assert [n.name for n in registry.all()] == ["before", "during"]
    await engine.dispose()


async def two_routers(database_url: str) -> tuple[AsyncEngine, Registry, Registry]:
    """Two routers' registries on one database."""
    engine = await open_database(database_url)
    return engine, Registry(engine, **SETTINGS), Registry(engine, **SETTINGS)


async def test_a_node_removed_by_another_router_disappears(
    tmp_path: Path, database_url: str
) -> None:
    engine, here, there = await two_routers(database_url)
    node = await here.register(request("gone"))
    await there.load()
    await there.remove(node.id)
    await here.load()
    assert here.all() == []
    await engine.dispose()


async def test_offline_records_expire(tmp_path: Path, database_url: str) -> None:
    engine = await open_database(database_url)
    registry = Registry(engine, **SETTINGS)
    old = await registry.register(request("old"))
    await registry.register(request("fresh"))
    assert await registry.purge_offline(24 * 3600) == []
    old.heard_at -= 25 * 3600  # the router has not heard of "old" for 25 hours
    assert await registry.purge_offline(24 * 3600) == ["old"]
    await registry.load()
    assert [n.name for n in registry.all()] == ["fresh"]
    await engine.dispose()


async def test_nodes_read_at_start_are_judged_by_when_they_last_spoke(
    database_url: str,
) -> None:
    """At first sight the stored time is all there is: a node last heard a day ago is
    offline, also to the management CLI (which judges by heartbeats alone), and expires;
    one heard a moment ago is ready to the CLI and kept."""
    engine, before, _ = await two_routers(database_url)
    await before.register(request("quiet"))
    await before.register(request("lively"))
    await before.write_heartbeats()
    async with engine.begin() as connection:  # quiet's last heartbeat was a day ago
        await connection.execute(
            update(nodes).where(nodes.c.name == "quiet")
            .values(last_seen=nodes.c.last_seen - 86400)
        )  # fmt: skip
    cli = Registry(engine, started_at=0.0, **SETTINGS)  # as admin.LocalAdmin opens it
    await cli.load()
    assert {n.name: n.status(10) for n in cli.all()} == {"quiet": "offline", "lively": "ready"}
    restarted = Registry(engine, **SETTINGS)
    await restarted.load()
    assert await restarted.purge_offline(3600) == ["quiet"]
    await engine.dispose()


async def test_a_heartbeat_during_the_sync_is_not_replaced_by_the_older_row(
    database_url: str,
) -> None:
    """A heartbeat that lands after the sync wrote memory's heartbeats but before it read
    the rows is newer than its row: the sync keeps it (the node's models stay current)."""
    engine, racing, registry = await racing_registry(database_url)
    node = await registry.register(request("busy"))
    newer = node.load.model_copy(update={"models_on_disk": ["fresh-model"]})
    racing.during = lambda: registry.heartbeat(node.id, newer)
    await registry.load()
    assert registry.get(node.id).load.models_on_disk == ["fresh-model"]
    await registry.load()  # the next sync writes it, and still has it
    assert registry.get(node.id).load.models_on_disk == ["fresh-model"]
    await engine.dispose()


async def test_wall_clock_steps_neither_drop_nor_keep_nodes(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Liveness is judged on the router's monotonic clock: a wall clock stepped forward a
    day takes no node offline and expires none; one that hears nothing still does."""
    engine, registry, _ = await two_routers(database_url)
    node = await registry.register(request("steady"))
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 86400)
    assert node.status(10) == "ready"
    assert await registry.purge_offline(3600) == []
    monkeypatch.setattr(time, "time", lambda: real() - 86400)
    await registry.heartbeat(node.id, node.load)
    await registry.load()
    assert node.status(10) == "ready"
    node.heard_at -= 31  # three heartbeats missed, whatever the wall clock says
    assert node.status(10) == "offline"
    await engine.dispose()


async def test_a_node_heard_by_a_router_whose_clock_is_behind_stays_ready(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node heartbeats to the other router, whose wall clock is an hour behind this
    one's: the changed row is word of the node, though its time looks older."""
    engine, here, there = await two_routers(database_url)
    node = await here.register(request("elsewhere"))
    await here.write_heartbeats()
    await there.load()
    here.get(node.id).heard_at -= 31  # the node last spoke to "here" 31 s ago
    assert here.get(node.id).status(10) == "offline"
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() - 3600)
    await there.heartbeat(node.id, node.load)
    await there.write_heartbeats()
    await here.load()
    assert here.get(node.id).status(10) == "ready"
    await engine.dispose()


async def test_assigned_lists_are_shared_and_never_overwritten(database_url: str) -> None:
    """Two routers change one node's assigned list, each from its own (stale) memory: both
    changes stay, and each router sees the other's at its next sync."""
    engine, here, there = await two_routers(database_url)
    node = await here.register(request("shared"))
    await there.load()
    await here.assign(node.id, add=["model-a", "model-x"])
    await there.assign(node.id, add=["model-b"])  # "there" has not seen model-a yet
    await there.assign(node.id, remove=["model-x"])
    await here.load()
    assert here.get(node.id).assigned == ["model-a", "model-b"]
    assert there.get(node.id).assigned == ["model-a", "model-b"]
    await engine.dispose()


async def test_a_node_registering_through_a_second_router_keeps_its_row(
    database_url: str,
) -> None:
    """The second router has not read the table since the node registered through the first:
    its INSERT meets the unique address, and it takes the row over (one node, one id)."""
    engine, here, there = await two_routers(database_url)
    first = await here.register(request("both"))
    again = await there.register(request("both"))
    assert again.id == first.id
    assert not again.first_seen_now  # the policy ran once, on the first router
    async with engine.connect() as connection:
        assert (await connection.execute(select(func.count()).select_from(nodes))).scalar() == 1
    await engine.dispose()
