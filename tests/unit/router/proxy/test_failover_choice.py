"""Proxy.choose over a real registry: large fleets rank a sample, prefixes find their node."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from llmlb.common.settings import BalancerStrategy, RouterSettings
from llmlb.common.wire import Device, NodeLoad, RegisterRequest
from llmlb.router.balancer.choice import SAMPLE
from llmlb.router.balancer.prefixes import prefix_blocks
from llmlb.router.fleet.registry import Registry
from llmlb.router.proxy.admission import Capacity
from llmlb.router.proxy.failover import Proxy
from llmlb.router.proxy.nodelink import NodeLinks
from llmlb.router.proxy.routing import Routed
from llmlb.router.storage.db import open_database
from llmlb.router.telemetry.metrics import RouterMetrics

GPU = Device(kind="cuda", name="GPU", memory_total=80 << 30, memory_free=80 << 30)
HOLDS = NodeLoad(state="ready", models_loaded=["m"], models_on_disk=["m"], slots_total=4)
LACKS = NodeLoad(state="ready", slots_total=4)


async def fleet(tmp_path: Path, loads: list[NodeLoad]) -> Registry:
    engine = await open_database(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    registry = Registry(engine, heartbeat_interval=10.0, allow_cpu_nodes=False,
                        require_approval=False, node_max_concurrency=None)  # fmt: skip
    for index, load in enumerate(loads):
        request = RegisterRequest(name=f"n{index}", base_url=f"http://n{index}:1", devices=[GPU],
                                  load=load)  # fmt: skip
        await registry.register(request)
    return registry


@pytest.fixture
async def session() -> AsyncIterator[NodeLinks]:
    links = NodeLinks(None, connect_timeout=5.0, read_timeout=30.0)
    yield links
    await links.close()


def proxy_over(registry: Registry, session: NodeLinks, home: Path,
               strategy: BalancerStrategy = "load") -> Proxy:  # fmt: skip
    settings = RouterSettings(home=home, auto_distribute="none", balancer=strategy)
    return Proxy(registry, settings, session, RouterMetrics(registry.all, 10.0), Capacity())


def chat(system: str, question: str) -> Routed:
    body = {"model": "m", "messages": [{"role": "system", "content": system},
                                       {"role": "user", "content": question}]}  # fmt: skip
    return Routed("chat", "/v1/chat/completions", "m", False, orjson.dumps(body),
                  prefix_blocks("m", body))  # fmt: skip


async def test_a_large_fleet_spreads_load_without_ranking_every_node(
    tmp_path: Path, session: NodeLinks
) -> None:
    registry = await fleet(tmp_path, [HOLDS] * (SAMPLE * 8) + [LACKS] * 20)
    proxy = proxy_over(registry, session, tmp_path)
    routed = Routed("chat", "/v1/chat/completions", "m", False, b"{}")
    for _ in range(SAMPLE * 8 * 4):  # as many requests as the holders have slots
        node = proxy.choose(routed, frozenset(), fetchable=True)
        assert node is not None and "m" in node.load.models_on_disk  # never one that lacks it
        node.active += 1
    busiest = max(n.active for n in registry.all())
    assert busiest <= 8  # the sample skips full nodes: no node beyond its limit
    # Every holder full: the whole set is looked at before giving up on holders.
    for node in registry.all():
        node.active = 8 if "m" in node.load.models_on_disk else 0
    fetching = proxy.choose(routed, frozenset(), fetchable=True)
    assert fetching is not None and "m" not in fetching.load.models_on_disk
    assert proxy.choose(routed, frozenset(), fetchable=False) is None


async def test_prefix_affinity_sends_a_shared_system_prompt_back_to_its_node(
    tmp_path: Path, session: NodeLinks
) -> None:
    registry = await fleet(tmp_path, [HOLDS] * 4)
    proxy = proxy_over(registry, session, tmp_path, "prefix_affinity")
    homes: dict[int, set[str]] = {}
    for turn in range(4):
        for group in range(6):
            system = f"You answer for office {group}. " + "Rules and notes. " * 120
            node = proxy.choose(chat(system, f"question {turn}"), frozenset(), False)
            assert node is not None
            homes.setdefault(group, set()).add(node.id)
    assert all(len(nodes) == 1 for nodes in homes.values())  # each group kept its node
    spread = Counter(next(iter(nodes)) for nodes in homes.values())
    assert len(spread) >= 3  # new conversations went by load, not all to one node
