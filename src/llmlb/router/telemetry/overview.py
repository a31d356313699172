"""The figures an operator watches: the fleet at a glance, and each node's recent history.

Node history is sampled from the registry (what the nodes' heartbeats said) every
``SAMPLE_SECONDS``, kept in memory for the last hour: about 120 small samples a node.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from llmlb.router.fleet.node_record import NodeRecord
from llmlb.router.fleet.registry import Registry
from llmlb.router.telemetry.events import EventBus
from llmlb.router.telemetry.history import History

SAMPLE_SECONDS = 30.0
SAMPLES_KEPT = 120  # an hour
PUBLISH_SECONDS = 5.0


class NodeTrends:
    def __init__(self) -> None:
        self._samples: dict[str, deque[dict[str, float]]] = {}

    def sample(self, nodes: list[NodeRecord]) -> None:
        now = time.time()
        present = set()
        for node in nodes:
            present.add(node.id)
            used = sum(d.memory_total - d.memory_free for d in node.current_devices() if d.is_gpu)
            load = node.load
            self._samples.setdefault(node.id, deque(maxlen=SAMPLES_KEPT)).append({
                "ts": now,
                "tokens_per_second": load.tokens_per_second,
                "slots_busy": load.slots_busy,
                "slots_total": load.slots_total,
                "active_requests": load.active_requests,
                "queued_requests": load.queued_requests,
                "cpu_percent": load.cpu_percent,
                "gpu_percent": load.gpu_percent,
                "gpu_memory_used": used,
            })  # fmt: skip
        for gone in set(self._samples) - present:
            del self._samples[gone]

    def of(self, node_id: str) -> list[dict[str, float]]:
        return list(self._samples.get(node_id, ()))


def fleet_figures(registry: Registry, interval: float) -> dict[str, Any]:
    """What the nodes' last heartbeats add up to."""
    now = time.monotonic()
    statuses: dict[str, int] = {}
    gpu_total = gpu_used = 0
    gpu_percents = []
    tokens_per_second = 0.0
    slots_busy = slots_total = in_flight = 0
    for node in registry.all():
        status = node.status(interval, now)
        statuses[status] = statuses.get(status, 0) + 1
        in_flight += registry.in_flight(node)
        if status == "offline":
            continue
        tokens_per_second += node.load.tokens_per_second
        slots_busy += node.load.slots_busy
        slots_total += node.load.slots_total
        gpus = [d for d in node.current_devices() if d.is_gpu]
        if gpus:
            gpu_percents.append(node.load.gpu_percent)
        gpu_total += sum(d.memory_total for d in gpus)
        gpu_used += sum(d.memory_total - d.memory_free for d in gpus)
    total = sum(statuses.values())
    return {
        "nodes_total": total,
        "nodes_online": total - statuses.get("offline", 0),
        "nodes_by_status": statuses,
        "tokens_per_second": tokens_per_second,
        "slots_busy": slots_busy,
        "slots_total": slots_total,
        "in_flight": in_flight,
        "gpu_percent": sum(gpu_percents) / len(gpu_percents) if gpu_percents else None,
        "gpu_memory_total": gpu_total,
        "gpu_memory_used": gpu_used,
    }


class Overview:
    """The overview's cards and the node trends, for the console's pages: asked for, and
    pushed every ``PUBLISH_SECONDS`` on the event bus while a page listens (pages never poll)."""

    def __init__(
        self, registry: Registry, history: History, events: EventBus, interval: float,
        waiting: Callable[[], int], providers: Callable[[], dict[str, bool]],
        nodes: Callable[[], list[dict[str, Any]]],
    ) -> None:  # fmt: skip
        self.trends = NodeTrends()
        self._registry = registry
        self._history = history
        self._events = events
        self._interval = interval
        self._waiting = waiting
        self._providers = providers
        self._nodes = nodes

    async def now(self) -> dict[str, Any]:
        """The fleet now, and the requests of the last minute."""
        last_minute = await self._history.summary(time.time() - 60)
        return {
            "ts": time.time(),
            **fleet_figures(self._registry, self._interval),
            "queued": self._waiting(),
            "requests_per_minute": last_minute["requests"],
            "success_rate": last_minute["success_rate"],
            "latency_ms": last_minute["latency_ms"],
            "ttft_ms": last_minute["ttft_ms"],
            "providers": self._providers(),
        }

    async def publish(self) -> None:
        if self._events.subscribers:
            self._events.publish({"type": "overview", **await self.now()})
            self._events.publish({"type": "nodes", "data": self._nodes()})

    async def sample(self) -> None:
        self.trends.sample(self._registry.all())
