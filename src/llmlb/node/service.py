"""The node's parts, and its state as it reports it.

``NodeService`` builds the store, the engine pool, the model resolver and sync, the inventory
(``node.inventory``: the models held) and inference (``node.inference``: requests to
engines), and answers for the node as a whole: its state, what it holds in flight, its health.
No web framework here: the HTTP layer (``node.app``) parses and answers, these modules decide.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator
from typing import Any

from llmlb import __version__
from llmlb.common.settings import NodeSettings
from llmlb.common.wire import Device, EngineInfo, NodeState
from llmlb.models.placement import Placement, usable_memory
from llmlb.models.store import ModelStore
from llmlb.node.cpus import usable_cpus
from llmlb.node.engine import EngineSpec, LlamaEngine, restore_signal_handlers
from llmlb.node.inference import Inference
from llmlb.node.inventory import Inventory, loaded_models
from llmlb.node.metrics import NodeMetrics
from llmlb.node.pool import EnginePool
from llmlb.node.resolver import ModelResolver
from llmlb.node.sync import ModelSync


def default_memory_budget(devices: list[Device], ram_total: int) -> int:
    """All GPU memory when there are GPUs; otherwise 80% of the machine's RAM."""
    return sum(memory_budgets(devices, ram_total))


def memory_budgets(devices: list[Device], ram_total: int, total: int | None = None) -> list[int]:
    """The pool's budget per device: each GPU's memory (``total``, where the operator set
    one, shared in proportion to their sizes; an Apple GPU's share of the unified memory);
    without a GPU, one figure for RAM (80% of it by default)."""
    gpus = [usable_memory(d.kind, d.memory_total) for d in devices if d.is_gpu]
    if not gpus or not sum(gpus):
        return [total if total is not None else int(ram_total * 0.8)]
    if total is None:
        return gpus
    return [total * size // sum(gpus) for size in gpus]


def placed_on(gpus: int) -> Callable[[EngineSpec, Placement], EngineSpec]:
    """The spec as it loads where ``models.placement`` put it, on a node with ``gpus`` GPUs
    (with one, or none, llama.cpp's default is the placement already, a partial offload's
    layer count aside)."""

    def placed(spec: EngineSpec, placement: Placement) -> EngineSpec:
        if placement.how == "partial" and placement.gpu_layers is not None:
            spec = dataclasses.replace(spec, gpu_layers=placement.gpu_layers)
        if gpus < 2:
            return spec
        shares = [0.0] * gpus
        for gpu, share in zip(placement.gpus, placement.shares, strict=True):
            shares[gpu] = share
        return dataclasses.replace(spec, gpu_shares=tuple(shares))

    return placed


class NodeService:
    def __init__(
        self,
        settings: NodeSettings,
        devices: list[Device],
        ram_total: int,
        load: Callable[[EngineSpec], LlamaEngine] = LlamaEngine.load,
        engine: EngineInfo | None = None,
    ) -> None:
        self.settings = settings
        self.devices = devices
        self.engine = engine or EngineInfo()  # what llama.cpp runs on (node.devices)
        self.store = ModelStore(settings.models_dir)
        self.state: NodeState = "initializing"
        self.started_at = time.monotonic()  # for the uptime (a wall clock may jump)
        budgets = memory_budgets(devices, ram_total, settings.memory_budget)
        self.pool: EnginePool[EngineSpec, LlamaEngine] = EnginePool(
            budgets, load, wait_seconds=settings.load_wait_seconds, on_change=self._model_event,
            split=settings.gpu_split, placed=placed_on(sum(d.is_gpu for d in devices)),
            partial=settings.gpu_overflow == "partial" and any(d.is_gpu for d in devices),
        )  # fmt: skip
        self.metrics = NodeMetrics(self.pool_state)
        self.resolver = ModelResolver(settings, self.store)
        self.sync = ModelSync(settings, self.resolver, self.loaded_models)
        self.inventory = Inventory(
            settings, devices, self.store, self.resolver, self.sync, self.pool,
            threads=settings.threads or usable_cpus(),
        )  # fmt: skip
        self.inference = Inference(settings, self.inventory, self.pool, self.metrics)
        self.requests_in_flight = 0  # client requests in this node's hands, at any stage

    def reported_state(self) -> NodeState:
        """``initializing`` while the models the router assigned before this node first
        served are still downloading (later ones show in the sync state: a node fetching a
        distributed model keeps serving what it has)."""
        if self.state == "ready" and self.sync.starting():
            return "initializing"
        return self.state

    @contextlib.contextmanager
    def handling(self) -> Iterator[None]:
        """Counts a client request from its arrival until its handler returns (a stream is
        then in an engine, counted there): the router compares the figure with what it has
        sent, to tell a node it cannot reach from one that is busy."""
        self.requests_in_flight += 1
        try:
            yield
        finally:
            self.requests_in_flight -= 1

    def loaded_models(self) -> set[str]:
        return loaded_models(self.pool)

    def recent_tokens_per_second(self) -> float:
        return self.metrics.recent_tokens_per_second()

    def recent_request_seconds(self) -> float:
        """A moving average of how long generation requests take (0 before the first)."""
        return self.inference.request_seconds

    def model_load_seconds(self) -> dict[str, float]:
        """How long the last load of each generation model took."""
        return {
            str(key[0]): round(seconds, 3)
            for key, seconds in self.pool.load_seconds.items()
            if isinstance(key, tuple) and key[1] == "generate"
        }

    def _model_event(self, event: str, key: Any) -> None:
        if event == "loaded":
            restore_signal_handlers()
        self.metrics.model_events.labels(str(key[0]), event).inc()

    def pool_state(self) -> dict[str, Any]:
        models = []
        for engine in self.pool.loaded().values():
            models.append(
                {
                    "name": engine.spec.name,
                    "purpose": engine.spec.purpose,
                    "slots_busy": engine.busy,
                    "slots_total": engine.spec.parallel,
                    "queued": engine.waiting,
                }
            )
        return {
            "models": models,
            "memory_used": self.pool.used_bytes,
            "memory_budget": self.pool.budget_bytes,
        }

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "state": self.reported_state(),
            "version": __version__,
            "uptime_seconds": round(time.monotonic() - self.started_at, 1),
            "devices": [d.model_dump() for d in self.devices],
            "engine": self.engine.model_dump(),
            "sync": self.sync.state().model_dump(),
            **self.pool_state(),
        }
