"""The models this node holds: what each needs to run (its engine's spec), what it lists,
when each last served, and fetching or deleting them.

The store and the resolver (``node.resolver``) own the files; this module reads them for the
rest of the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any

from llmlb.common.errors import LlmlbError, ModelLoadFailed, NotFound
from llmlb.common.names import UNKNOWN_MODEL_LABEL
from llmlb.common.settings import NodeSettings
from llmlb.common.wire import Device
from llmlb.models.gguf import GGUFError, GGUFInfo, read_gguf
from llmlb.models.memory import kv_bytes_per_token_of, memory_needed
from llmlb.models.store import ModelStore, StoredModel
from llmlb.node.engine import EngineSpec, LlamaEngine, Purpose
from llmlb.node.pool import EnginePool
from llmlb.node.resolver import ModelResolver
from llmlb.node.sync import ModelSync
from llmlb.node.templates import resolve_template

LAST_USED_WRITE_SECONDS = 60.0


def estimate_memory(model: StoredModel, info: GGUFInfo, ctx_size: int) -> int:
    """What the engine will take (models.memory): weights, compute buffers and the KV cache
    for ``ctx_size`` tokens; ``required_memory_bytes`` in the model's metadata overrides it."""
    configured = model.metadata.get("required_memory_bytes")
    required = configured if isinstance(configured, int) and configured > 0 else None
    kv_cache = kv_bytes_per_token_of(info) * ctx_size
    return memory_needed(model.size_bytes, kv_cache=kv_cache, required=required)


def loaded_models(pool: EnginePool[EngineSpec, LlamaEngine]) -> set[str]:
    """Models with an engine, loaded or loading (a model being loaded is in use)."""
    names = {engine.spec.name for engine in pool.loaded().values()}
    names.update(key[0] for key in pool.loading() if isinstance(key, tuple))
    return names


@dataclass
class _ModelInfo:
    mtime: float
    info: GGUFInfo


class Inventory:
    def __init__(
        self,
        settings: NodeSettings,
        devices: list[Device],
        store: ModelStore,
        resolver: ModelResolver,
        sync: ModelSync,
        pool: EnginePool[EngineSpec, LlamaEngine],
        threads: int,
    ) -> None:
        self.settings = settings
        self.devices = devices
        self.store = store
        self.resolver = resolver
        self.sync = sync
        self.pool = pool
        self._threads = threads
        self._gguf: dict[str, _ModelInfo] = {}
        self._last_used: dict[str, float] = {}  # model -> when a request last finished

    async def model(self, name: str) -> StoredModel:
        """The model's file: here already, or fetched (bounded by download_wait_seconds)."""
        return await self.resolver.ensure(name, self.settings.download_wait_seconds)

    async def gguf_info(self, model: StoredModel) -> GGUFInfo:
        """The model's GGUF header, read once per file change and off the event loop (a
        large vocabulary takes about 100 ms to parse)."""
        mtime = model.path.stat().st_mtime
        cached = self._gguf.get(model.name)
        if cached is None or cached.mtime != mtime:
            try:
                cached = _ModelInfo(mtime, await asyncio.to_thread(read_gguf, model.path))
            except GGUFError as exc:
                raise ModelLoadFailed(f"cannot load model {model.name!r}: {exc}") from exc
            self._gguf[model.name] = cached
        return cached.info

    async def spec_for(self, name: str, purpose: Purpose) -> EngineSpec:
        model = await self.model(name)
        info = await self.gguf_info(model)
        try:
            template = resolve_template(name, model.metadata, info.metadata)
        except ValueError as exc:
            raise ModelLoadFailed(str(exc)) from exc
        ctx = self.settings.ctx_size
        if info.context_length:
            ctx = min(ctx, info.context_length)
        prompt_cache_mib = self.settings.prompt_cache_mib if purpose == "generate" else 0
        memory = estimate_memory(model, info, ctx)
        if not any(d.is_gpu for d in self.devices):
            # The prompt cache is host memory: part of the budget where the budget is RAM.
            memory += prompt_cache_mib << 20
        return EngineSpec(
            name=name,
            path=model.path,
            purpose=purpose,
            memory_bytes=memory,
            prompt_cache_mib=prompt_cache_mib,
            slot_choice=self.settings.slot_choice,
            template=template,
            ctx_size=ctx,
            # An embedding engine runs one sequence at a time (llama.cpp pools per slot).
            parallel=self.settings.parallel if purpose == "generate" else 1,
            threads=self._threads,
            gpu_layers=self.settings.gpu_layers,
            layers=_layer_count(info),
            projector=model.projector if purpose == "generate" else None,
        )

    def list_models(self) -> list[dict[str, Any]]:
        loaded = loaded_models(self.pool)
        assigned = set(self.sync.assigned)
        return [
            {
                "id": model.name,
                "object": "model",
                "created": int(model.path.stat().st_mtime),
                "owned_by": "llmlb",
                "size_bytes": model.size_bytes,
                "sha256": model.sha256,
                "parts": len(model.parts) or 1,
                "installed_at": model.metadata.get("downloaded_at", model.path.stat().st_mtime),
                "last_used": self._last_used.get(model.name, model.metadata.get("last_used_at")),
                "loaded": model.name in loaded,
                "assigned": model.name in assigned,
                "shared": bool(model.metadata.get("shared")),
            }
            for model in self.resolver.all_local()
        ]

    def used(self, name: str) -> None:
        """Remember when a model last served (in metadata.json at most once a minute, for
        ``--prune``'s least-recently-used order after a restart)."""
        now = time.time()
        before = self._last_used.get(name, 0.0)
        self._last_used[name] = now
        if now - before >= LAST_USED_WRITE_SECONDS and self.store.get(name) is not None:
            with contextlib.suppress(OSError, LlmlbError):
                self.store.update_metadata(name, {"last_used_at": now})

    def model_label(self, body: dict[str, Any]) -> str:
        """A metric label for a request's model: a model this node has, else one fixed label."""
        model = body.get("model")
        if isinstance(model, str):
            with contextlib.suppress(LlmlbError):
                name = self.resolver.canonical(model)
                if self.resolver.local(name) is not None:
                    return name
        return UNKNOWN_MODEL_LABEL

    async def pull(self, name: str, assign: bool = False) -> dict[str, Any]:
        name = self.resolver.canonical(name)
        if assign:  # before the next heartbeat answer says so: it may prune for it
            self.sync.assign(name)
        if self.resolver.local(name) is None:
            await self.resolver.pull(name)
        progress = self.resolver.progress_of(name)
        assert progress is not None
        return progress

    async def delete_model(self, name: str) -> None:
        """Unload and delete a model from the store; never while it serves requests."""
        name = self.resolver.canonical(name)
        await self.pool.unload(lambda spec: spec.name == name)
        # The router removes it from the node's list as it asks (node key holders only):
        # not fetched again unless the router's next answer still names it.
        self.sync.unassign(name)
        if not self.store.remove(name):
            raise NotFound(f"model {name!r} is not in this node's store", code="model_not_found")
        self._gguf.pop(name, None)


def _layer_count(info: GGUFInfo) -> int:
    count = info.arch_value("block_count")
    return count if isinstance(count, int) else 0
