"""The management CLI without --router works on the database: what it shows of nodes is
judged by their last heartbeats (real SQLite file)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import update

from llmlb.cli.local_admin import LocalAdmin
from llmlb.common.settings import RouterSettings
from llmlb.common.wire import Device, RegisterRequest
from llmlb.router.fleet.registry import Registry
from llmlb.router.storage.db import nodes, open_database

GPU = Device(kind="cuda", name="GPU", memory_total=8 << 30, memory_free=8 << 30)


async def test_the_local_node_list_shows_a_silent_node_offline(tmp_path: Path) -> None:
    settings = RouterSettings(home=tmp_path)
    engine = await open_database(settings.db_url)
    registry = Registry(
        engine, heartbeat_interval=10, allow_cpu_nodes=False, require_approval=False,
        node_max_concurrency=None,
    )  # fmt: skip
    for name in ("silent", "lively"):
        await registry.register(RegisterRequest(name=name, base_url=f"http://{name}:1",
                                                devices=[GPU]))  # fmt: skip
    await registry.write_heartbeats()
    async with engine.begin() as connection:  # "silent" last spoke a week ago
        await connection.execute(
            update(nodes).where(nodes.c.name == "silent")
            .values(last_seen=nodes.c.last_seen - 7 * 86400)
        )  # fmt: skip
    await engine.dispose()
    admin = LocalAdmin(settings)
    listed = {node["name"]: node["status"] for node in await admin.nodes()}
    assert listed == {"silent": "offline", "lively": "ready"}
