"""Prometheus metrics of a node, in a registry of its own (no global state)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)


class _PoolCollector(Collector):
    """Slots, loaded models and memory, read from the pool at scrape time."""

    def __init__(self, read: Callable[[], dict[str, Any]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        state = self._read()
        busy = GaugeMetricFamily("llmlb_node_slots_busy", "Slots generating now", labels=["model"])
        total = GaugeMetricFamily(
            "llmlb_node_slots_total", "Slots of loaded models", labels=["model"]
        )
        queued = GaugeMetricFamily(
            "llmlb_node_requests_queued", "Requests waiting for a slot", labels=["model"]
        )
        for model in state["models"]:
            busy.add_metric([model["name"]], model["slots_busy"])
            total.add_metric([model["name"]], model["slots_total"])
            queued.add_metric([model["name"]], model["queued"])
        yield busy
        yield total
        yield queued
        yield GaugeMetricFamily(
            "llmlb_node_models_loaded", "Engines loaded", value=len(state["models"])
        )
        yield GaugeMetricFamily(
            "llmlb_node_memory_used_bytes", "Model memory in use", value=state["memory_used"]
        )
        yield GaugeMetricFamily(
            "llmlb_node_memory_budget_bytes", "Model memory budget", value=state["memory_budget"]
        )


# Prompts shorter than this (mostly cached, or a word) say more about overheads than speed.
MIN_MEASURED_PROMPT = 64


def moving_average(previous: float, value: float) -> float:
    """The figures a node reports recently: a fifth of each new value (the first value alone
    while nothing was measured, ``previous`` 0)."""
    return value if not previous else 0.8 * previous + 0.2 * value


class NodeMetrics:
    def __init__(self, read_pool: Callable[[], dict[str, Any]]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "llmlb_node_requests", "Requests served", ["endpoint", "model", "status"], registry=r
        )
        self.errors = Counter("llmlb_node_errors", "Failed requests", ["type"], registry=r)
        self.tokens = Counter(
            "llmlb_node_tokens", "Tokens processed", ["model", "direction"], registry=r
        )
        self.tokens_per_second = Gauge(
            "llmlb_node_tokens_per_second", "Generation speed of the last request", ["model"],
            registry=r,
        )  # fmt: skip
        self.ttft = Histogram(
            "llmlb_node_time_to_first_token_seconds", "Time to first token", ["model"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "llmlb_node_request_duration_seconds", "Request duration", ["endpoint", "model"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.model_events = Counter(
            "llmlb_node_model_events", "Model loads and evictions", ["model", "event"], registry=r
        )
        r.register(_PoolCollector(read_pool))
        self._recent_speed: dict[str, tuple[float, float]] = {}
        # Moving average of prompt tokens computed a second (the balancer weighs the prefill
        # a cached prefix saves against a wait for a slot); 0 until a prompt was measured.
        self.prompt_tokens_per_second = 0.0

    def record_usage(self, model: str, usage: dict[str, Any], timings: dict[str, Any]) -> None:
        self.tokens.labels(model, "in").inc(int(usage.get("prompt_tokens") or 0))
        self.tokens.labels(model, "out").inc(int(usage.get("completion_tokens") or 0))
        speed = timings.get("predicted_per_second")
        if speed:
            self.tokens_per_second.labels(model).set(float(speed))
            self._recent_speed[model] = (float(speed), time.monotonic())
        computed, prompt_ms = timings.get("prompt_n") or 0, timings.get("prompt_ms") or 0
        if computed >= MIN_MEASURED_PROMPT and prompt_ms > 0:
            self.prompt_tokens_per_second = moving_average(
                self.prompt_tokens_per_second, computed / prompt_ms * 1000
            )

    def recent_tokens_per_second(self, window: float = 30.0) -> float:
        """Sum over models of the generation speed of their last request in ``window`` s."""
        now = time.monotonic()
        return sum(speed for speed, at in self._recent_speed.values() if now - at < window)

    def render(self) -> bytes:
        return generate_latest(self.registry)
