"""Prometheus metrics of the router, in a registry of its own.

What a pager needs (the alert rules: ``deploy/prometheus/alerts.yml`` and the chart's
PrometheusRule): latency and time to first byte by endpoint, provider and node (node names
bounded: past ``MAX_NODE_LABELS`` they count as ``other``), how long requests waited for a
node, queue depth against its capacity, each node up or down and its state, each device's
GPU memory, how many ready nodes hold each model the fleet has, and when the router's TLS
certificate expires. Model loads and evictions are the nodes' own metrics.

With worker processes (``router.workers``) a scrape reaches one of them: the counters,
histograms and the queue's depth are then kept in files every worker writes
(prometheus_client's multiprocess mode, set up by the supervisor through
``PROMETHEUS_MULTIPROC_DIR``) and summed at each scrape; what every worker knows alike (the
fleet, read from the database) and its settings are answered from its own memory.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from llmlb.router.fleet.node_record import NodeRecord

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
NODE_STATES = ("pending", "initializing", "ready", "draining", "offline")
MAX_NODE_LABELS = 512  # distinct node names in the latency series; the rest are "other"


class _FleetCollector(Collector):
    def __init__(self, nodes: Callable[[], list[NodeRecord]], interval: float,
                 in_flight: Callable[[NodeRecord], int]) -> None:  # fmt: skip
        self._nodes = nodes
        self._interval = interval
        self._in_flight = in_flight

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
        up = GaugeMetricFamily("llmlb_node_up", "1 while the node answers (not offline)",
                               labels=["node"])  # fmt: skip
        memory = GaugeMetricFamily(
            "llmlb_node_gpu_memory_bytes", "GPU memory per device, as the node last reported",
            labels=["node", "device", "kind"],
        )  # fmt: skip
        ready_nodes = GaugeMetricFamily(
            "llmlb_model_ready_nodes", "Ready nodes holding each model the fleet has",
            labels=["model"],
        )  # fmt: skip
        counts: dict[str, int] = {}
        for node in self._nodes():
            current = node.status(self._interval, now)
            for name in NODE_STATES:
                state.add_metric([node.name, name], 1.0 if name == current else 0.0)
            active.add_metric([node.name], self._in_flight(node))
            busy.add_metric([node.name], node.load.slots_busy)
            total.add_metric([node.name], node.load.slots_total)
            up.add_metric([node.name], 0.0 if current == "offline" else 1.0)
            for index, device in enumerate(node.current_devices()):
                if device.is_gpu:
                    label = f"{index}:{device.name}"[:100]
                    memory.add_metric([node.name, label, "total"], device.memory_total)
                    memory.add_metric([node.name, label, "free"], device.memory_free)
            for model in {*node.load.models_loaded, *node.load.models_on_disk}:
                counts[model] = counts.get(model, 0) + (current == "ready")
        for model, count in sorted(counts.items()):
            ready_nodes.add_metric([model], count)
        yield from (state, active, busy, total, up, memory, ready_nodes)


class _SettingsCollector(Collector):
    """What this process answers from its settings and its own state (never from the
    workers' shared files): the queue's capacity, the TLS certificate's expiry, open
    dashboard streams."""

    def __init__(self, queue_size: int, tls_cert: Path | None) -> None:
        self._queue_size = queue_size
        self._tls_cert = tls_cert
        self.event_streams: Callable[[], int] = lambda: 0

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("llmlb_queue_capacity",
                                "Requests that may wait for a node (queue_size)",
                                value=self._queue_size)  # fmt: skip
        if self._tls_cert is not None:
            yield GaugeMetricFamily("llmlb_tls_certificate_expiry_timestamp_seconds",
                                    "When the router's TLS certificate expires (Unix time)",
                                    value=certificate_expiry(self._tls_cert))  # fmt: skip
        yield GaugeMetricFamily("llmlb_event_streams", "Open /api/events streams (dashboards)",
                                value=self.event_streams())  # fmt: skip


class RouterMetrics:
    def __init__(self, nodes: Callable[[], list[NodeRecord]], interval: float,
                 queue_size: int = 0, tls_cert: Path | None = None,
                 in_flight: Callable[[NodeRecord], int] = lambda node: node.active,
                 ) -> None:  # fmt: skip
        self.registry = CollectorRegistry()
        # Worker processes: the counted metrics go to the shared files alone, and each scrape
        # sums them (into ``_counted``); one process: they are in this registry.
        shared = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        self._counted: CollectorRegistry | None = None
        r: CollectorRegistry | None = self.registry
        if shared:
            self._counted, r = CollectorRegistry(), None
            MultiProcessCollector(self._counted, path=shared)  # type: ignore[no-untyped-call]
        self.requests = Counter(
            "llmlb_requests",
            "Client requests",
            ["endpoint", "model", "provider", "status"],
            registry=r,
        )
        self.errors = Counter("llmlb_errors", "Failed requests by type", ["type"], registry=r)
        self.latency = Histogram(
            "llmlb_request_duration_seconds", "Time to the last byte",
            ["endpoint", "provider", "node"], buckets=_BUCKETS, registry=r,
        )  # fmt: skip
        self.ttft = Histogram(
            "llmlb_time_to_first_byte_seconds", "Time to the first byte of the answer",
            ["endpoint", "provider", "node"], buckets=_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_wait = Histogram(
            "llmlb_queue_wait_seconds", "Time a request waited for a node (0: none)",
            buckets=(0, *_BUCKETS), registry=r,
        )  # fmt: skip
        self.tokens = Counter(
            "llmlb_tokens", "Tokens", ["model", "provider", "direction"], registry=r
        )
        self.retries = Counter("llmlb_retries", "Requests retried on another node", registry=r)
        self.queue_depth = Gauge("llmlb_queue_depth", "Requests waiting for a node",
                                 registry=r, multiprocess_mode="livesum")  # fmt: skip
        self.blob_requests = Counter(
            "llmlb_blob_requests", "Model file requests from nodes", ["model"], registry=r
        )
        self.own = _SettingsCollector(queue_size, tls_cert)
        self.registry.register(self.own)
        self.registry.register(_FleetCollector(nodes, interval, in_flight))

    def render(self) -> bytes:
        own = generate_latest(self.registry)
        return own if self._counted is None else own + generate_latest(self._counted)


def certificate_expiry(path: Path) -> float:
    """The first certificate's notAfter in a PEM file (Unix time), read each scrape (a
    renewed file counts at once); 0 when it cannot be read."""
    from cryptography import x509

    try:
        certificate = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return 0.0
    return certificate.not_valid_after_utc.timestamp()
