"""Putting models on nodes: assignment at registration, operator distribution, removal, and
the fleet-wide view of where every model is."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from llmlb.common.errors import BadRequest, Unavailable
from llmlb.common.settings import RouterSettings
from llmlb.models.memory import DEFAULT_PLAN_CTX, gib
from llmlb.models.placement import usable_memory
from llmlb.router.distribution.model_store import RouterModels
from llmlb.router.distribution.policy import assign_models, pick_auto_targets
from llmlb.router.distribution.tasks import TaskManager
from llmlb.router.fleet.control import NodeControl
from llmlb.router.fleet.node_record import NodeRecord
from llmlb.router.fleet.registry import Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Distribution:
    tasks: list[dict[str, Any]]
    skipped: list[dict[str, str]]  # nodes ``all`` left out, with their status


def device_memory(node: NodeRecord, free: bool = False) -> list[int]:
    """The memory models go in, per device: each GPU's (a CPU node's RAM), free or in all."""
    devices = node.current_devices()
    gpus = [d for d in devices if d.kind != "cpu"] or devices
    if free:
        return [d.memory_free for d in gpus]
    return [usable_memory(d.kind, d.memory_total) for d in gpus]  # as the node budgets it


def node_memory(node: NodeRecord, free: bool = False) -> int:
    return sum(device_memory(node, free))


class Distributor:
    def __init__(
        self,
        settings: RouterSettings,
        registry: Registry,
        models: RouterModels,
        tasks: TaskManager,
        control: NodeControl,
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._models = models
        self._tasks = tasks
        self._control = control

    def assignments(self, node: NodeRecord) -> list[str]:
        """What the auto-distribution policy wants on the node (held or not)."""
        catalog = self._models.catalog
        gpus_free = [d.memory_free for d in node.current_devices() if d.is_gpu]
        gpu_free = sum(gpus_free)
        ctx_size = node.load.ctx_size or DEFAULT_PLAN_CTX
        models = assign_models(
            catalog.entries(), device_memory(node), self._settings.auto_distribute,
            [catalog.resolve(name) for name in self._settings.recommended_models],
            tiers=catalog.tiers, gpu_memory=gpus_free or 0, ctx_size=ctx_size,
            split=self._settings.gpu_split,
        )  # fmt: skip
        for model in models:
            if model in node.assigned:
                continue
            entry = catalog.get(model)
            needed = entry.memory_needed(ctx_size) if entry else 0
            log.info(
                "assigning %s to node %s: %s of GPU memory free, %s needed at %d tokens of context",
                model, node.name, gib(gpu_free), gib(needed), ctx_size,
            )  # fmt: skip
        return models

    async def assign_on_registration(self, node: NodeRecord) -> list[str]:
        """A new node gets the policy's models on its assigned list; every registration
        gets a pull task for each assigned model the node lacks (once per model and node).
        The whole assigned list.

        Only a node's first registration runs the policy: a node that comes back keeps its
        list, so a model the operator removed stays removed, and a node re-registering with
        models loaded (less free memory) is not given a smaller tier's model as well."""
        if node.first_seen_now and (chosen := self.assignments(node)):
            await self._registry.assign(node.id, add=chosen)
        missing = [m for m in node.assigned if m not in node.load.models_on_disk]
        if missing:  # most registrations: no task list to read
            active = {
                (t["model"], t["node_id"]) for t in await self._tasks.list()
                if t["state"] in ("pending", "in_progress")
            }  # fmt: skip
            for model in missing:
                if (model, node.id) not in active:
                    await self._tasks.create("node_pull", model, node.id)
        return node.assigned

    async def distribute(
        self, model: str, target: str, node_ids: list[str] | None, count: int = 1
    ) -> Distribution:
        """Pull tasks for the chosen nodes. ``all`` means every node that can take one now;
        the others are reported in ``skipped``. Named nodes that cannot are an error."""
        entry = self._models.entry(model)
        model = entry.name  # as typed, it may be an alias
        now = time.monotonic()
        interval = self._settings.heartbeat_interval
        skipped: list[dict[str, str]] = []
        if target == "all":
            chosen = []
            for node in self._registry.all():
                if node.is_endpoint:
                    continue  # it serves what it has; the router puts nothing on it
                status = node.status(interval, now)
                if status in ("offline", "pending"):
                    skipped.append({"node_id": node.id, "node": node.name, "status": status})
                else:
                    chosen.append(node)
        elif target == "specific":
            if not node_ids:
                raise BadRequest("target 'specific' needs node_ids", param="node_ids")
            chosen = [self._registry.get(node_id) for node_id in node_ids]
            _refuse_endpoints(chosen)
        elif target == "auto":
            ready = {n.id: device_memory(n, free=True) for n in self._registry.all()
                     if n.status(interval, now) in ("ready", "initializing")
                     and not n.is_endpoint}  # fmt: skip
            picked = pick_auto_targets(
                ready, entry.memory_needed(), count, self._settings.gpu_split
            )
            if not picked:
                raise Unavailable(f"no ready node has the free GPU memory {model!r} needs")
            chosen = [self._registry.get(node_id) for node_id in picked]
        else:
            raise BadRequest("target must be 'all', 'specific' or 'auto'", param="target")
        offline = [n.name for n in chosen if n.status(interval, now) in ("offline", "pending")]
        if offline:
            raise Unavailable(
                f"cannot distribute to {', '.join(offline)}: offline or pending",
                code="node_offline",
                headers={"Retry-After": "10"},
            )
        if not chosen:
            reason = f" ({len(skipped)} offline or pending)" if skipped else ""
            raise Unavailable(f"there are no nodes to distribute to{reason}", code="no_nodes")
        for node in chosen:  # the node keeps it, and fetches it again after a restart
            await self._registry.assign(node.id, add=[model])
        tasks = [await self._tasks.create("node_pull", model, node.id) for node in chosen]
        return Distribution(tasks, skipped)

    async def remove_from_node(self, node_id: str, model: str) -> None:
        """Take the model off the node's assigned list, then off its disk. Off the list
        first, so that no heartbeat answer sent meanwhile asks the node to fetch it again;
        a node that never had it (404) is done."""
        model = self._models.canonical(model)
        node = self._registry.get(node_id)
        _refuse_endpoints([node])
        await self._registry.assign(node.id, remove=[model])
        await self._control.remove_model(node, model)
        for attr in ("models_on_disk", "models_loaded"):
            names = getattr(node.load, attr)
            if model in names:
                names.remove(model)
        self._registry.changed()

    def available(self) -> list[dict[str, Any]]:
        """Every catalog model (and any other the fleet holds), with its state on each node."""
        nodes = self._registry.all()
        names = set(self._models.catalog.names()) | set(self._registry.fleet_models())
        rows = []
        for name in sorted(names):
            entry = self._models.catalog.get(name)
            per_node = []
            for node in nodes:
                per_node.append({"node_id": node.id, "node": node.name, **_state_on(node, name)})
            rows.append({
                "name": name,
                "in_catalog": entry is not None,
                "registered": self._models.catalog.is_registered(name),  # from the hub
                "on_router": self._models.store.get(name) is not None,
                "size_bytes": entry.size_bytes if entry else None,
                "required_memory_bytes": entry.memory_needed() if entry else None,
                "nodes": per_node,
            })  # fmt: skip
        return rows


def _state_on(node: NodeRecord, model: str) -> dict[str, Any]:
    if model in node.load.models_loaded:
        return {"state": "loaded"}
    if model in node.load.models_on_disk:
        return {"state": "on_disk"}
    download = node.load.downloads.get(model)
    if download and download.get("state") in ("pending", "downloading", "verifying"):
        return {"state": "downloading", "percent": download.get("percent")}
    return {"state": "absent"}


def _refuse_endpoints(nodes: list[NodeRecord]) -> None:
    """The router puts no model on an endpoint, and takes none off it: it serves its own."""
    endpoints = [n.name for n in nodes if n.is_endpoint]
    if endpoints:
        raise BadRequest(
            f"{', '.join(endpoints)}: an endpoint serves the models it has; the router "
            "distributes models only to llmlb nodes", param="node_ids", code="node_is_endpoint",
        )  # fmt: skip
