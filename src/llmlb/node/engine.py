"""One loaded model: llama.cpp's server context running in this process through xllamacpp.

llama.cpp does the batching: every request handed to it joins the running batch in a free slot
(continuous batching). Its handler calls block the calling thread until the response is done,
releasing the GIL, so each engine owns a thread pool with one thread per slot and the event loop
never waits on llama.cpp. Streams come back through a callback on that thread; returning True
from it tells llama.cpp to stop, which frees the slot when a client goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import orjson

from llmlb.common.errors import BadRequest, LlmlbError, ModelLoadFailed, from_engine_error
from llmlb.models.gguf import GGUFError, read_gguf
from llmlb.node.assemble import Endpoint, assemble
from llmlb.node.templates import ChatTemplate

log = logging.getLogger(__name__)

Purpose = Literal["generate", "embed"]
# A rewrite of an engine's raw stream chunks (node.tools.rewrite).
Shape = Callable[[AsyncIterator[bytes]], AsyncGenerator[bytes, None]]
_END = object()


@dataclass(frozen=True)
class EngineSpec:
    name: str
    path: Path
    purpose: Purpose
    memory_bytes: int
    template: ChatTemplate
    ctx_size: int
    parallel: int
    threads: int
    gpu_layers: int = -1
    layers: int = 0  # the model's layer count (for a partial offload); 0: not known
    # Each GPU's share of the layers (node.devices order), from models.placement; () leaves
    # llama.cpp's default (every visible GPU). One non-zero share: that GPU alone.
    gpu_shares: tuple[float, ...] = ()
    prompt_cache_mib: int = 0  # llama.cpp's host-memory prompt cache; 0: off
    slot_choice: Literal["cache", "similarity"] = "cache"  # (NodeSettings.slot_choice)
    # The multimodal projector (mmproj) that lets the model see images; None: text only.
    projector: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, Purpose]:
        return (self.name, self.purpose)


def _engine_params(spec: EngineSpec) -> Any:
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(spec.path)
    params.model_alias = {spec.name}
    params.n_ctx = spec.ctx_size
    params.n_parallel = spec.parallel
    # One KV cache shared by all slots: any one request may use the whole context.
    params.kv_unified = True
    params.cont_batching = True
    params.n_gpu_layers = spec.gpu_layers
    _place_on_gpus(params, spec.gpu_shares)
    params.cpuparams.n_threads = spec.threads
    params.cpuparams_batch.n_threads = spec.threads
    # llama.cpp keeps finished prompts' KV in host memory to reuse their prefixes (8 GiB a
    # model unless told): the node's setting, counted in its memory budget.
    params.cache_ram_mib = spec.prompt_cache_mib
    # (NodeSettings.slot_choice) 0 turns llama.cpp's choice by similarity off: every request
    # takes the least recently used slot and restores its best match from the prompt cache;
    # idle slots are not emptied into the cache as requests start (that left nothing to
    # restore: the empty slot a request took kept only the system prompt's match).
    if spec.slot_choice == "cache" and spec.prompt_cache_mib:
        params.slot_prompt_similarity = 0.0
        params.cache_idle_slots = False
    params.verbosity = -1
    # xllamacpp always starts llama.cpp's own HTTP server as well. The node never uses it:
    # loopback only, behind a random key nobody is told, so no local process can reach the
    # model around the node's own key.
    params.hostnames = ["127.0.0.1"]
    params.port = 0
    params.api_keys = [secrets.token_urlsafe(32)]  # (the engine keeps it: count_tokens)
    if spec.purpose == "embed":
        # One input is embedded in one physical batch: at the default 512 tokens an ordinary
        # RAG chunk failed ("increase the physical batch size"). The whole context instead.
        params.n_batch = params.n_ubatch = spec.ctx_size
        params.embedding = True
        params.pooling_type = xllamacpp.llama_pooling_type.LLAMA_POOLING_TYPE_MEAN
    if spec.template.jinja is not None:
        params.use_jinja = True
        params.chat_template = spec.template.jinja
    if spec.projector is not None:
        params.mmproj.path = str(spec.projector)
    return params


def _place_on_gpus(params: Any, shares: tuple[float, ...]) -> None:
    """The engine's GPU options for a placement: one GPU (no split), or layers split in
    proportion to ``shares`` with the largest share's GPU the main one."""
    import xllamacpp

    used = [index for index, share in enumerate(shares) if share > 0]
    if not used:
        return
    main = max(used, key=lambda index: shares[index])
    params.main_gpu = main
    if len(used) == 1:
        params.split_mode = xllamacpp.llama_split_mode.LLAMA_SPLIT_MODE_NONE
        return
    params.split_mode = xllamacpp.llama_split_mode.LLAMA_SPLIT_MODE_LAYER
    split = list(params.tensor_split)
    for index, share in enumerate(shares[: len(split)]):
        split[index] = share
    params.tensor_split = split


class LlamaEngine:
    """A loaded model. Build it with :meth:`load` (blocking: call it off the event loop)."""

    def __init__(self, spec: EngineSpec, server: Any, internal_key: str = "") -> None:
        self.spec = spec
        self._server = server
        self._internal_key = internal_key
        self._executor = ThreadPoolExecutor(
            max_workers=spec.parallel, thread_name_prefix=f"engine-{spec.name}"
        )
        self._cancel_all = threading.Event()
        self._slots = asyncio.Semaphore(spec.parallel)
        self.busy = 0
        self.waiting = 0

    @property
    def internal_url(self) -> str:
        """llama.cpp's own HTTP server (loopback, behind a key only this object knew)."""
        return str(self._server.listening_address)

    @classmethod
    def load(cls, spec: EngineSpec) -> LlamaEngine:
        try:
            read_gguf(spec.path)
        except (GGUFError, OSError) as exc:
            raise ModelLoadFailed(f"cannot load model {spec.name!r}: {exc}") from exc
        import xllamacpp

        params = _engine_params(spec)
        try:
            server = xllamacpp.Server(params)
        except RuntimeError as exc:
            raise ModelLoadFailed(
                f"cannot load model {spec.name!r} from {spec.path}: llama.cpp rejected it ({exc})"
            ) from exc
        return cls(spec, server, params.api_keys[0])

    async def complete(
        self, endpoint: Endpoint, body: dict[str, Any], shape: Shape | None = None
    ) -> dict[str, Any]:
        """A whole chat or text completion, generated as a stream and assembled: a caller
        that is cancelled (its client left) stops generation at the next token, which
        llama.cpp's non-streaming call cannot do (node.assemble). ``shape`` rewrites the
        stream's chunks first (node.tools)."""
        options = body.get("stream_options") or {}
        streamed = {**body, "stream": True, "stream_options": {**options, "include_usage": True}}
        chunks: list[dict[str, Any]] = []
        async with contextlib.aclosing(self.stream(endpoint, streamed)) as stream:
            shaped = shape(stream) if shape is not None else stream
            async for raw in shaped:
                chunks.extend(_parse_chunks(raw))
        if not chunks:
            raise LlmlbError(f"model {self.spec.name!r} returned nothing")
        return assemble(endpoint, chunks)

    async def stream(self, endpoint: Endpoint, body: dict[str, Any]) -> AsyncGenerator[bytes, None]:
        """Raw JSON chunks as llama.cpp emits them. Closing the iterator frees the slot.

        An error before the first chunk is raised; after it, the error chunk is yielded as is
        (the caller turns it into an SSE error event).
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        cancelled = threading.Event()
        cancel_all = self._cancel_all

        def on_chunk(data: bytes) -> bool:
            loop.call_soon_threadsafe(queue.put_nowait, data)
            return cancelled.is_set() or cancel_all.is_set()

        handler = self._handler(endpoint)
        async with self._slot():
            future = asyncio.ensure_future(self._run(handler, orjson.dumps(body), on_chunk))
            future.add_done_callback(lambda _: queue.put_nowait(_END))
            first = True
            try:
                while (item := await queue.get()) is not _END:
                    assert isinstance(item, bytes)
                    if item.strip() == b"null":  # llama.cpp's opening of a multi-prompt stream
                        continue
                    if first and _is_error(item):
                        raise from_engine_error(_error_payload(item))
                    first = False
                    yield item
                future.result()
            finally:
                # A client that went away: the next callback answers True, llama.cpp stops
                # and frees the slot.
                cancelled.set()
                if not future.done():
                    future.add_done_callback(_consume_exception)

    async def count_tokens(self, endpoint: Endpoint, body: dict[str, Any]) -> int:
        """The tokens of a request's prompt (a chat's as this model's template renders it):
        through llama.cpp's own server, its /apply-template and /tokenize (xllamacpp binds
        neither)."""
        headers = {"authorization": f"Bearer {self._internal_key}"}
        async with httpx.AsyncClient(base_url=self.internal_url, headers=headers,
                                     timeout=60) as client:  # fmt: skip
            prompt = body.get("prompt") or ""
            if endpoint == "chat":
                fields = {k: body[k] for k in ("messages", "tools", "tool_choice") if k in body}
                rendered = await client.post("/apply-template", json=fields)
                if rendered.status_code != 200:
                    raise from_engine_error(_error_payload(rendered.content))
                prompt = rendered.json().get("prompt", "")
            if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
                return len(prompt)  # token ids already
            if isinstance(prompt, list):
                prompt = "".join(str(p) for p in prompt)
            tokens = await client.post("/tokenize", json={"content": prompt, "add_special": True})
            if tokens.status_code != 200:
                raise from_engine_error(_error_payload(tokens.content))
            return len(tokens.json().get("tokens") or [])

    async def embed(self, body: dict[str, Any]) -> dict[str, Any]:
        payload = orjson.dumps(body)
        async with self._slot():
            raw = await self._run(self._server.handle_embeddings, payload)
        return _parse_or_raise(raw)

    def close(self) -> None:
        """Stop streams at their next token, wait for the slots' threads, free the model."""
        self._cancel_all.set()
        self._executor.shutdown(wait=True)
        server, self._server = self._server, None
        del server

    def _handler(self, endpoint: Endpoint) -> Callable[..., Any]:
        if endpoint == "chat":
            return self._server.handle_chat_completions  # type: ignore[no-any-return]
        return self._server.handle_completions  # type: ignore[no-any-return]

    @asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        """Counts requests waiting for and holding one of the engine's slots."""
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.busy += 1
        try:
            yield
        finally:
            self.busy -= 1
            self._slots.release()

    async def _run(self, handler: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, handler, *args)
        except (RuntimeError, ValueError, TypeError) as exc:
            raise engine_exception(exc) from exc


# What llama.cpp's JSON library and request parsing say when a request has the wrong shape
# (nlohmann's type_error.302 and friends): the client's mistake, so a 400.
_REQUEST_SHAPE_ERRORS = ("type_error", "parse_error", "out_of_range", "invalid_argument",
                         "[json.exception", "invalid", "must be", "expected")  # fmt: skip


def engine_exception(exc: Exception) -> LlmlbError:
    """An exception from inside llama.cpp's handler, as an error a client can read."""
    message = str(exc) or type(exc).__name__
    if any(marker in message.lower() for marker in _REQUEST_SHAPE_ERRORS):
        return BadRequest(f"the engine rejected the request: {message}")
    return LlmlbError(f"the engine failed: {message}")


def _is_error(chunk: bytes) -> bool:
    return chunk[:12].lstrip().startswith(b'{"error"')


def _error_payload(chunk: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(chunk)
    except orjson.JSONDecodeError:
        return {"message": chunk.decode(errors="replace")}
    error = data.get("error", data) if isinstance(data, dict) else {}
    return error if isinstance(error, dict) else {"message": str(error)}


def _parse_or_raise(raw: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise LlmlbError(f"the engine returned invalid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise LlmlbError("the engine returned a non-object response")
    if "error" in data:
        raise from_engine_error(_error_payload(raw))
    return data


def _parse_chunks(raw: bytes) -> list[dict[str, Any]]:
    """One stream callback's chunks: an object, or an array of them (several prompts)."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise LlmlbError(f"the engine returned invalid JSON: {exc}") from exc
    items = data if isinstance(data, list) else [data]
    items = [item for item in items if item is not None]
    for item in items:
        if not isinstance(item, dict):
            raise LlmlbError("the engine returned a chunk that is not an object")
        if "error" in item:
            raise from_engine_error(_error_payload(orjson.dumps(item)))
    return items


def _consume_exception(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def restore_signal_handlers() -> None:
    """llama.cpp installs its own SIGINT/SIGTERM handlers when a model loads; put ours back.

    Python's handlers stay registered at the Python level, so re-installing them restores the
    C-level trampoline. Only the main thread may do this.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(sig)
        if handler is not None:
            signal.signal(sig, handler)
