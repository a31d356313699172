"""The registry's periodic re-read of the node table, racing registrations (real SQLite)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from llmlb.common.wire import Device, RegisterRequest
from llmlb.router.db import nodes, open_database
from llmlb.router.registry import Registry

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


async def test_a_node_registering_while_the_table_is_read_is_kept(
    tmp_path: Path, database_url: str
) -> None:
    engine = await open_database(database_url)
    racing = RegistersDuringSelect(engine)
    registry = Registry(
        racing,  # type: ignore[arg-type]
        heartbeat_interval=10, allow_cpu_nodes=False, require_approval=False,
        node_max_concurrency=None,
    )  # fmt: skip
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
    settings: dict[str, Any] = dict(
        heartbeat_interval=10, allow_cpu_nodes=False, require_approval=False,
        node_max_concurrency=None,
    )  # fmt: skip
    return engine, Registry(engine, **settings), Registry(engine, **settings)


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
    registry = Registry(
        engine, heartbeat_interval=10, allow_cpu_nodes=False, require_approval=False,
        node_max_concurrency=None,
    )  # fmt: skip
    old = await registry.register(request("old"))
    await registry.register(request("fresh"))
    old.last_seen -= 25 * 3600
    async with engine.begin() as connection:
        await connection.execute(
            update(nodes).where(nodes.c.id == old.id).values(last_seen=old.last_seen)
        )
    assert await registry.purge_offline(24 * 3600) == ["old"]
    await registry.load()
    assert [n.name for n in registry.all()] == ["fresh"]
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
