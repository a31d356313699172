"""Prometheus metrics of the router, in a registry of its own."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from llmlb.router.fleet.node_record import NodeRecord

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
NODE_STATES = ("pending", "initializing", "ready", "draining", "offline")


class _FleetCollector(Collector):
    def __init__(self, nodes: Callable[[], list[NodeRecord]], interval: float) -> None:
        self._nodes = nodes
        self._interval = interval

    def collect(self) -> Iterator[Metric]:
        now = time.monotonic()
        state = GaugeMetricFamily(
            "llmlb_node_state", "1 for the state each node is in", labels=["node", "state"]
        )
        active = GaugeMetricFamily(
            "llmlb_node_active_requests", "Router requests in flight per node", labels=["node"]
        )
        busy = GaugeMetricFamily("llmlb_node_slots_busy", "Busy slots per node", labels=["node"])
        total = GaugeMetricFamily("llmlb_node_slots_total", "Slots per node", labels=["node"])
        for node in self._nodes():
            current = node.status(self._interval, now)
            for name in NODE_STATES:
                state.add_metric([node.name, name], 1.0 if name == current else 0.0)
            active.add_metric([node.name], node.active)
            busy.add_metric([node.name], node.load.slots_busy)
            total.add_metric([node.name], node.load.slots_total)
        yield from (state, active, busy, total)


class RouterMetrics:
    def __init__(self, nodes: Callable[[], list[NodeRecord]], interval: float) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "llmlb_requests",
            "Client requests",
            ["endpoint", "model", "provider", "status"],
            registry=r,
        )
        self.errors = Counter("llmlb_errors", "Failed requests by type", ["type"], registry=r)
        self.latency = Histogram(
            "llmlb_request_duration_seconds", "Time to the last byte", ["endpoint"],
            buckets=_BUCKETS, registry=r,
        )  # fmt: skip
        self.ttft = Histogram(
            "llmlb_time_to_first_byte_seconds", "Time to the first byte of the answer",
            ["endpoint"], buckets=_BUCKETS, registry=r,
        )  # fmt: skip
        self.tokens = Counter(
            "llmlb_tokens", "Tokens", ["model", "provider", "direction"], registry=r
        )
        self.retries = Counter("llmlb_retries", "Requests retried on another node", registry=r)
        self.queue_depth = Gauge("llmlb_queue_depth", "Requests waiting for a node", registry=r)
        self.event_streams = Gauge(
            "llmlb_event_streams", "Open /api/events streams (dashboards)", registry=r
        )
        self.blob_requests = Counter(
            "llmlb_blob_requests", "Model file requests from nodes", ["model"], registry=r
        )
        r.register(_FleetCollector(nodes, interval))

    def render(self) -> bytes:
        return generate_latest(self.registry)
