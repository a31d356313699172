"""The node's core: models from the store, engines from the pool, requests to engines.

No web framework here: the HTTP layer (``node.app``) parses and answers, this module decides.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import orjson

from llmlb import __version__
from llmlb.common.errors import (
    BadRequest,
    LlmlbError,
    ModelLoadFailed,
    NotFound,
    error_body,
)
from llmlb.common.names import UNKNOWN_MODEL_LABEL
from llmlb.common.settings import NodeSettings
from llmlb.common.wire import Device, NodeState
from llmlb.models.gguf import GGUFError, GGUFInfo, read_gguf
from llmlb.models.memory import kv_bytes_per_token_of, memory_needed
from llmlb.models.store import ModelStore, StoredModel
from llmlb.node.assemble import Endpoint
from llmlb.node.engine import EngineSpec, LlamaEngine, Purpose, Shape, restore_signal_handlers
from llmlb.node.metrics import NodeMetrics
from llmlb.node.pool import EnginePool
from llmlb.node.resolver import ModelResolver
from llmlb.node.stops import client_stops, honour_stops
from llmlb.node.sync import ModelSync
from llmlb.node.templates import resolve_template, with_stops
from llmlb.node.tools import plan_tools, rewrite, with_closing_penalty
from llmlb.node.validation import model_name, validate_embeddings, validate_generation

log = logging.getLogger(__name__)

DONE_EVENT = b"data: [DONE]\n\n"
LAST_USED_WRITE_SECONDS = 60.0
EMBED_BATCH = 16  # inputs per engine call of an embedding request


def default_memory_budget(devices: list[Device], ram_total: int) -> int:
    """All GPU memory when there are GPUs; otherwise 80% of the machine's RAM."""
    gpu_total = sum(d.memory_total for d in devices if d.is_gpu)
    return gpu_total if gpu_total else int(ram_total * 0.8)


def estimate_memory(model: StoredModel, info: GGUFInfo, ctx_size: int) -> int:
    """What the engine will take (models.memory): weights, compute buffers and the KV cache
    for ``ctx_size`` tokens; ``required_memory_bytes`` in the model's metadata overrides it."""
    configured = model.metadata.get("required_memory_bytes")
    required = configured if isinstance(configured, int) and configured > 0 else None
    kv_cache = kv_bytes_per_token_of(info) * ctx_size
    return memory_needed(model.size_bytes, kv_cache=kv_cache, required=required)


def _wants_nothing(body: dict[str, Any]) -> bool:
    return 0 in (body.get("max_tokens"), body.get("max_completion_tokens"))


async def _as_stream(answer: dict[str, Any], with_usage: bool) -> AsyncGenerator[bytes, None]:
    """A whole (empty) answer as the stream of chunks a client asked for."""
    head = {k: answer[k] for k in ("id", "created", "model")}
    kind = "chat.completion.chunk" if answer["object"] == "chat.completion" else "text_completion"
    if kind == "chat.completion.chunk":
        delta = {"role": "assistant", "content": ""}
        piece = {"index": 0, "delta": delta, "finish_reason": "length", "logprobs": None}
    else:
        piece = {"index": 0, "text": "", "finish_reason": "length", "logprobs": None}
    yield sse(orjson.dumps({**head, "object": kind, "choices": [piece]}))
    usage = {**head, "object": kind, "choices": [], "usage": answer["usage"]}
    yield sse(orjson.dumps(usage)) if with_usage else b": usage " + orjson.dumps(usage) + b"\n\n"
    yield DONE_EVENT


def sse(data: bytes) -> bytes:
    return b"data: " + data + b"\n\n"


@dataclass
class _ModelInfo:
    mtime: float
    info: GGUFInfo


class NodeService:
    def __init__(
        self,
        settings: NodeSettings,
        devices: list[Device],
        ram_total: int,
        load: Callable[[EngineSpec], LlamaEngine] = LlamaEngine.load,
    ) -> None:
        self.settings = settings
        self.devices = devices
        self.store = ModelStore(settings.models_dir)
        self.state: NodeState = "initializing"
        self.started_at = time.monotonic()  # for the uptime (a wall clock may jump)
        budget = settings.memory_budget or default_memory_budget(devices, ram_total)
        self.pool: EnginePool[EngineSpec, LlamaEngine] = EnginePool(
            budget, load, wait_seconds=settings.load_wait_seconds, on_change=self._model_event
        )
        self.metrics = NodeMetrics(self.pool_state)
        self._gguf: dict[str, _ModelInfo] = {}
        self.resolver = ModelResolver(settings, self.store)
        self.sync = ModelSync(settings, self.resolver, self.loaded_models)
        self._last_used: dict[str, float] = {}  # model -> when a request last finished
        self.requests_in_flight = 0  # client requests in this node's hands, at any stage
        self._threads = settings.threads or os.cpu_count() or 1
        self._request_seconds = 0.0  # moving average of request durations (heartbeats)

    # -- models ---------------------------------------------------------------------------

    async def _model(self, name: str) -> StoredModel:
        """The model's file: here already, or fetched (bounded by download_wait_seconds)."""
        return await self.resolver.ensure(name, self.settings.download_wait_seconds)

    async def _gguf_info(self, model: StoredModel) -> GGUFInfo:
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
        model = await self._model(name)
        info = await self._gguf_info(model)
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
            template=template,
            ctx_size=ctx,
            # An embedding engine runs one sequence at a time (llama.cpp pools per slot).
            parallel=self.settings.parallel if purpose == "generate" else 1,
            threads=self._threads,
            gpu_layers=self.settings.gpu_layers,
        )

    def list_models(self) -> list[dict[str, Any]]:
        loaded = self.loaded_models()
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

    def _used(self, name: str) -> None:
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
        """Models with an engine, loaded or loading (a model being loaded is in use)."""
        names = {engine.spec.name for engine in self.pool.loaded().values()}
        names.update(key[0] for key in self.pool.loading() if isinstance(key, tuple))
        return names

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

    def recent_tokens_per_second(self) -> float:
        return self.metrics.recent_tokens_per_second()

    def recent_request_seconds(self) -> float:
        """A moving average of how long generation requests take (0 before the first)."""
        return self._request_seconds

    def model_load_seconds(self) -> dict[str, float]:
        """How long the last load of each generation model took."""
        return {
            str(key[0]): round(seconds, 3)
            for key, seconds in self.pool.load_seconds.items()
            if isinstance(key, tuple) and key[1] == "generate"
        }

    def _finished(self, endpoint: Endpoint, model: str, started: float) -> None:
        seconds = time.monotonic() - started
        self.metrics.latency.labels(endpoint, model).observe(seconds)
        previous = self._request_seconds
        self._request_seconds = seconds if not previous else 0.8 * previous + 0.2 * seconds
        if model != UNKNOWN_MODEL_LABEL:
            self._used(model)

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
            "sync": self.sync.state().model_dump(),
            **self.pool_state(),
        }

    # -- requests -------------------------------------------------------------------------

    async def prepare(
        self, endpoint: Endpoint, body: dict[str, Any]
    ) -> tuple[EngineSpec, dict[str, Any], Shape | None]:
        """The engine, the request as it gets it, and how its answer's chunks are to be
        rewritten: tool calls in the generic format (node.tools), the client's stop
        sequences matched by the node (node.stops)."""
        name = self.resolver.canonical(model_name(body))
        spec = await self.spec_for(name, "generate")
        body = validate_generation(body, endpoint, spec.ctx_size, spec.parallel, self.settings)
        shape: Shape | None = None
        plan = None
        if endpoint == "chat":
            body, plan = plan_tools(body, spec.template)
            if plan is not None:
                shape = functools.partial(rewrite, plan)
        body = with_closing_penalty(body)
        stops = client_stops(body)
        if plan is None and stops and (body.get("n") or 1) == 1:
            body = {k: v for k, v in body.items() if k != "stop"} | {"timings_per_token": True}
            shape = functools.partial(honour_stops, stops, endpoint)
        if endpoint == "chat":
            body = with_stops(body, spec.template)
        return spec, body, shape

    async def complete(self, endpoint: Endpoint, body: dict[str, Any]) -> dict[str, Any]:
        spec, body, shape = await self.prepare(endpoint, body)
        if _wants_nothing(body):
            return await self._nothing(endpoint, spec, body)
        started = time.monotonic()
        async with self.pool.lease(spec) as engine:
            response = await engine.complete(endpoint, {**body, "stream": False}, shape)
        timings = response.get("timings") or {}
        self.metrics.record_usage(spec.name, response.get("usage") or {}, timings)
        if "prompt_ms" in timings:
            self.metrics.ttft.labels(spec.name).observe(float(timings["prompt_ms"]) / 1000)
        self._finished(endpoint, spec.name, started)
        return response

    async def open_stream(
        self, endpoint: Endpoint, body: dict[str, Any]
    ) -> AsyncGenerator[bytes, None]:
        """Start a stream; errors up to the first chunk raise (so they get a status code).

        Returns SSE frames; a failure after the first frame ends the stream with one error
        event and ``[DONE]``.
        """
        spec, body, shape = await self.prepare(endpoint, body)
        options = body.get("stream_options") or {}
        wants_usage = bool(options.get("include_usage"))
        if _wants_nothing(body):
            return _as_stream(await self._nothing(endpoint, spec, body), wants_usage)
        # Always ask for usage so the metrics see token counts; drop it if the client did not.
        body = {**body, "stream": True, "stream_options": {**options, "include_usage": True}}
        started = time.monotonic()
        stack = AsyncExitStack()
        try:
            engine = await stack.enter_async_context(self.pool.lease(spec))
            chunks = engine.stream(endpoint, body)
            stack.push_async_callback(chunks.aclose)  # (closing the rewrite does not close it)
            if shape is not None:
                chunks = shape(chunks)
                stack.push_async_callback(chunks.aclose)
            first = await anext(chunks)
        except BaseException:
            await stack.aclose()
            raise
        self.metrics.ttft.labels(spec.name).observe(time.monotonic() - started)
        return self._frames(spec.name, endpoint, first, chunks, stack, wants_usage, started)

    async def _frames(
        self,
        model: str,
        endpoint: Endpoint,
        first: bytes,
        chunks: AsyncIterator[bytes],
        stack: AsyncExitStack,
        wants_usage: bool,
        started: float,
    ) -> AsyncGenerator[bytes, None]:
        async with stack:
            try:
                yield sse(first)
                async for chunk in chunks:
                    if b'"error"' in chunk[:16]:
                        yield sse(chunk)
                        break
                    usage_only = b'"usage"' in chunk and self._is_usage_chunk(model, chunk)
                    if usage_only and not wants_usage:
                        # An SSE comment: clients skip it, the router reads token counts from it.
                        yield b": usage " + chunk + b"\n\n"
                        continue
                    yield sse(chunk)
            except LlmlbError as exc:
                yield sse(orjson.dumps(exc.to_dict()))
            except Exception as exc:  # the stream has begun: report in-band, never re-raise
                log.exception("stream failed")
                yield sse(orjson.dumps(error_body(f"stream failed: {exc}", "server_error")))
            yield DONE_EVENT
        self._finished(endpoint, model, started)

    def _is_usage_chunk(self, model: str, chunk: bytes) -> bool:
        data = orjson.loads(chunk)
        usage = data.get("usage")
        if not isinstance(usage, dict):
            return False
        self.metrics.record_usage(model, usage, data.get("timings") or {})
        return not data.get("choices")

    async def _check_dimensions(self, name: str, dimensions: Any) -> None:
        """``dimensions`` may only name the model's own size: cutting a vector short is
        meaningful for models trained for it (OpenAI's), not for an arbitrary GGUF."""
        if dimensions is None:
            return
        info = await self._gguf_info(await self._model(name))
        size = info.arch_value("embedding_length")
        if dimensions != size:
            raise BadRequest(f"this model's embeddings have {size} dimensions; 'dimensions' "
                             "cannot change that here", param="dimensions")  # fmt: skip

    async def count_tokens(self, body: dict[str, Any]) -> dict[str, Any]:
        """``{"input_tokens": n}``: the prompt a chat request would give its model (tools
        described as the node will describe them), without generating."""
        spec, body, _ = await self.prepare("chat", body)
        async with self.pool.lease(spec) as engine:
            return {"input_tokens": await engine.count_tokens("chat", body)}

    async def _nothing(self, endpoint: Endpoint, spec: EngineSpec,
                       body: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
        """The answer to a request for no output (``max_tokens: 0``): empty, finish reason
        ``length``, and the prompt's tokens counted, without generating."""
        async with self.pool.lease(spec) as engine:
            prompt = await engine.count_tokens(endpoint, body)
        choice: dict[str, Any] = {"index": 0, "finish_reason": "length", "logprobs": None}
        if endpoint == "chat":
            choice["message"] = {"role": "assistant", "content": "", "refusal": None}
        else:
            choice["text"] = ""
        return {
            "id": f"chatcmpl-{secrets.token_hex(12)}", "created": int(time.time()),
            "model": spec.name, "object": "chat.completion" if endpoint == "chat"
            else "text_completion", "choices": [choice],
            "usage": {"prompt_tokens": prompt, "completion_tokens": 0, "total_tokens": prompt},
        }  # fmt: skip

    async def embeddings(self, body: dict[str, Any]) -> dict[str, Any]:
        """Embeddings, computed ``EMBED_BATCH`` inputs at a time: the engine's one slot is
        released between batches, so a large request does not starve small ones."""
        name = self.resolver.canonical(model_name(body))
        items = validate_embeddings(body, self.settings)
        spec = await self.spec_for(name, "embed")
        await self._check_dimensions(name, body.get("dimensions"))
        body = {k: v for k, v in body.items() if k != "dimensions"}
        data: list[dict[str, Any]] = []
        prompt_tokens = 0
        response: dict[str, Any] = {}
        async with self.pool.lease(spec) as engine:
            for start in range(0, len(items), EMBED_BATCH):
                batch = items[start : start + EMBED_BATCH]
                response = await engine.embed({**body, "input": batch})
                for row in response.get("data") or []:
                    data.append({**row, "index": start + int(row.get("index", 0))})
                usage = response.get("usage") or {}
                prompt_tokens += int(usage.get("prompt_tokens") or 0)
        self.metrics.tokens.labels(name, "in").inc(prompt_tokens)
        usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
        return {**response, "data": data, "usage": usage}
