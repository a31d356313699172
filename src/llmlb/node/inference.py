"""Requests to engines: generation (whole and streamed), token counts and embeddings.

Each request is checked (``node.validation``), given the engine for its model, and rewritten
where the node does more than llama.cpp: tool calls (``node.tools``), the client's stop
sequences (``node.stops``), a request for no output at all.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import orjson

from llmlb.common import tracing
from llmlb.common.errors import BadRequest, LlmlbError, error_body
from llmlb.common.names import UNKNOWN_MODEL_LABEL
from llmlb.common.settings import NodeSettings
from llmlb.node.assemble import Endpoint
from llmlb.node.engine import EngineSpec, LlamaEngine, Shape
from llmlb.node.inventory import Inventory
from llmlb.node.metrics import NodeMetrics, moving_average
from llmlb.node.pool import EnginePool
from llmlb.node.stops import client_stops, honour_stops
from llmlb.node.templates import with_stops
from llmlb.node.tools import plan_tools, rewrite, with_closing_penalty
from llmlb.node.validation import model_name, validate_embeddings, validate_generation

log = logging.getLogger(__name__)

DONE_EVENT = b"data: [DONE]\n\n"
EMBED_BATCH = 16  # inputs per engine call of an embedding request


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


def _trace_timings(usage: dict[str, Any], timings: dict[str, Any]) -> None:
    """llama.cpp's prompt processing and generation as spans placed by its own timings
    (they end now, the generation last), with their token counts."""
    prompt_ms = float(timings.get("prompt_ms") or 0)
    predicted_ms = float(timings.get("predicted_ms") or 0)
    end = time.time_ns()
    generation_start = end - int(predicted_ms * 1e6)
    tracing.interval("llmlb.prompt", generation_start - int(prompt_ms * 1e6), generation_start,
                     tokens=usage.get("prompt_tokens"),
                     cached_tokens=timings.get("cache_n"))  # fmt: skip
    tracing.interval("llmlb.generation", generation_start, end,
                     tokens=usage.get("completion_tokens"))  # fmt: skip
    tracing.annotate(tokens_in=usage.get("prompt_tokens"), ttft_ms=round(prompt_ms, 2),
                     tokens_out=usage.get("completion_tokens"))  # fmt: skip


class Inference:
    def __init__(
        self,
        settings: NodeSettings,
        inventory: Inventory,
        pool: EnginePool[EngineSpec, LlamaEngine],
        metrics: NodeMetrics,
    ) -> None:
        self.settings = settings
        self.inventory = inventory
        self.pool = pool
        self.metrics = metrics
        self.request_seconds = 0.0  # moving average of request durations (heartbeats)

    def _finished(self, endpoint: Endpoint, model: str, started: float) -> None:
        seconds = time.monotonic() - started
        self.metrics.latency.labels(endpoint, model).observe(seconds)
        self.request_seconds = moving_average(self.request_seconds, seconds)
        if model != UNKNOWN_MODEL_LABEL:
            self.inventory.used(model)

    async def prepare(
        self, endpoint: Endpoint, body: dict[str, Any]
    ) -> tuple[EngineSpec, dict[str, Any], Shape | None]:
        """The engine, the request as it gets it, and how its answer's chunks are to be
        rewritten: tool calls in the generic format (node.tools), the client's stop
        sequences matched by the node (node.stops)."""
        name = self.inventory.resolver.canonical(model_name(body))
        spec = await self.inventory.spec_for(name, "generate")
        body = validate_generation(body, endpoint, spec.ctx_size, spec.parallel, self.settings,
                                   sees=spec.projector is not None)  # fmt: skip
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

    def _leased(self, spec: EngineSpec) -> contextlib.AbstractAsyncContextManager[LlamaEngine]:
        """The pool's lease (a slot; a load if the model is not loaded), as a span."""
        if not tracing.ENABLED:
            return self.pool.lease(spec)
        loads = spec.key not in self.pool.loaded()  # (a load, or a wait for one, is in the span)
        return _traced_lease(self.pool.lease(spec), spec.name, loads)

    async def _prepared(
        self, endpoint: Endpoint, body: dict[str, Any]
    ) -> tuple[EngineSpec, dict[str, Any], Shape | None]:
        if not tracing.ENABLED:
            return await self.prepare(endpoint, body)
        with tracing.span("llmlb.prepare"):  # (validation, the model resolved)
            prepared = await self.prepare(endpoint, body)
        tracing.annotate(model=prepared[0].name)  # (on the request's span)
        return prepared

    async def complete(self, endpoint: Endpoint, body: dict[str, Any]) -> dict[str, Any]:
        spec, body, shape = await self._prepared(endpoint, body)
        if _wants_nothing(body):
            return await self._nothing(endpoint, spec, body)
        started = time.monotonic()
        async with self._leased(spec) as engine:
            response = await engine.complete(endpoint, {**body, "stream": False}, shape)
        timings = response.get("timings") or {}
        self.metrics.record_usage(spec.name, response.get("usage") or {}, timings)
        if tracing.ENABLED:
            _trace_timings(response.get("usage") or {}, timings)
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
        spec, body, shape = await self._prepared(endpoint, body)
        options = body.get("stream_options") or {}
        wants_usage = bool(options.get("include_usage"))
        if _wants_nothing(body):
            return _as_stream(await self._nothing(endpoint, spec, body), wants_usage)
        # Always ask for usage so the metrics see token counts; drop it if the client did not.
        body = {**body, "stream": True, "stream_options": {**options, "include_usage": True}}
        started = time.monotonic()
        stack = AsyncExitStack()
        try:
            engine = await stack.enter_async_context(self._leased(spec))
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
        tracing.annotate(ttft_ms=round((time.monotonic() - started) * 1000, 2))
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
        if tracing.ENABLED:
            _trace_timings(usage, data.get("timings") or {})
        return not data.get("choices")

    async def _check_dimensions(self, name: str, dimensions: Any) -> None:
        """``dimensions`` may only name the model's own size: cutting a vector short is
        meaningful for models trained for it (OpenAI's), not for an arbitrary GGUF."""
        if dimensions is None:
            return
        info = await self.inventory.gguf_info(await self.inventory.model(name))
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
        name = self.inventory.resolver.canonical(model_name(body))
        items = validate_embeddings(body, self.settings)
        spec = await self.inventory.spec_for(name, "embed")
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


@contextlib.asynccontextmanager
async def _traced_lease(
    lease: contextlib.AbstractAsyncContextManager[LlamaEngine], model: str, loads: bool
) -> AsyncIterator[LlamaEngine]:
    with tracing.span("llmlb.engine", model=model, model_load=loads):
        engine = await lease.__aenter__()
    try:
        yield engine
    except BaseException as exc:
        if not await lease.__aexit__(type(exc), exc, exc.__traceback__):
            raise
    else:
        await lease.__aexit__(None, None, None)
