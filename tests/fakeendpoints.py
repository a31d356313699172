"""Loopback stand-ins for servers people already run, in their own wire formats, for the
endpoint tests where the real server cannot run here (vLLM and SGLang need GPUs; Ollama is
a Go binary not on PyPI).

- ``vllm``: vLLM's OpenAI server with ``--api-key``: ``/v1/*`` needs the key (401
  ``{"error": "Unauthorized"}`` otherwise), ``/metrics`` does not; ``/v1/models`` lists the
  Hugging Face id with vLLM's fields (``root``, ``max_model_len``, ``permission``); ``/metrics``
  has vLLM's ``vllm:num_requests_running`` and ``vllm:num_requests_waiting`` gauges.
- ``ollama``: Ollama's ``/api/tags`` (names with tags, digests, details) and its
  OpenAI-compatible ``/v1/chat/completions`` (``system_fingerprint: fp_ollama``); no key.

Each records the requests it gets (path, authorization, the body's model) and answers chats
with a text naming itself, whole or streamed as OpenAI frames it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tests.support import ThreadServer

VLLM_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
OLLAMA_MODEL = "llama3.2:1b"


@dataclass
class Call:
    path: str
    authorization: str | None
    model: str | None


@dataclass
class FakeEndpoint:
    kind: str
    key: str | None = None
    running: int = 0  # what its metrics say (vLLM)
    waiting: int = 0
    delay: float = 0.0  # seconds each chat takes
    calls: list[Call] = field(default_factory=list)
    server: ThreadServer | None = None
    in_flight: int = 0
    peak: int = 0  # the most chats it held at once

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    def chats(self) -> list[Call]:
        return [c for c in self.calls if c.path.endswith("/chat/completions")]

    def start(self, port: int = 0) -> FakeEndpoint:
        self.server = ThreadServer(self._app(), port)
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    def _authorized(self, request: Request) -> bool:
        return self.key is None or request.headers.get("authorization") == f"Bearer {self.key}"

    def _app(self) -> Starlette:
        async def models(request: Request) -> Response:
            self.calls.append(Call(request.url.path, request.headers.get("authorization"), None))
            if not self._authorized(request):
                return Response(b'{"error":"Unauthorized"}', 401, media_type="application/json")
            return Response(orjson.dumps(_vllm_models()), media_type="application/json")

        async def tags(request: Request) -> Response:
            self.calls.append(Call(request.url.path, request.headers.get("authorization"), None))
            return Response(orjson.dumps(_ollama_tags()), media_type="application/json")

        async def metrics(request: Request) -> Response:
            return Response(_vllm_metrics(self.running, self.waiting), media_type="text/plain")

        async def chat(request: Request) -> Response:
            body = orjson.loads(await request.body())
            self.calls.append(Call(request.url.path, request.headers.get("authorization"),
                                   body.get("model")))  # fmt: skip
            if not self._authorized(request):
                return Response(b'{"error":"Unauthorized"}', 401, media_type="application/json")
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            try:
                await asyncio.sleep(self.delay)
            finally:
                self.in_flight -= 1
            text = f"Paris, says {self.kind}"
            if body.get("stream"):
                return StreamingResponse(_frames(self.kind, body["model"], text),
                                         media_type="text/event-stream")  # fmt: skip
            return Response(orjson.dumps(_completion(self.kind, body["model"], text)),
                            media_type="application/json")  # fmt: skip

        routes = [Route("/v1/chat/completions", chat, methods=["POST"])]
        if self.kind == "ollama":
            routes += [Route("/api/tags", tags, methods=["GET"]),
                       Route("/v1/models", tags, methods=["GET"])]  # fmt: skip
        else:
            routes += [Route("/v1/models", models, methods=["GET"]),
                       Route("/metrics", metrics, methods=["GET"])]  # fmt: skip
        return Starlette(routes=routes)


def _vllm_models() -> dict[str, Any]:
    created = int(time.time())
    return {"object": "list", "data": [{
        "id": VLLM_MODEL, "object": "model", "created": created, "owned_by": "vllm",
        "root": VLLM_MODEL, "parent": None, "max_model_len": 32768,
        "permission": [{"id": "modelperm-5c1e3c0a2f6b4a3e9d1f", "object": "model_permission",
                        "created": created, "allow_create_engine": False,
                        "allow_sampling": True, "allow_logprobs": True,
                        "allow_search_indices": False, "allow_view": True,
                        "allow_fine_tuning": False, "organization": "*", "group": None,
                        "is_blocking": False}],
    }]}  # fmt: skip


def _vllm_metrics(running: int, waiting: int) -> str:
    labels = f'engine="0",model_name="{VLLM_MODEL}"'
    return (
        "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
        "# TYPE vllm:num_requests_running gauge\n"
        f"vllm:num_requests_running{{{labels}}} {float(running)}\n"
        "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
        "# TYPE vllm:num_requests_waiting gauge\n"
        f"vllm:num_requests_waiting{{{labels}}} {float(waiting)}\n"
        "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.\n"
        "# TYPE vllm:kv_cache_usage_perc gauge\n"
        f"vllm:kv_cache_usage_perc{{{labels}}} 0.0125\n"
    )


def _ollama_tags() -> dict[str, Any]:
    return {"models": [{
        "name": OLLAMA_MODEL, "model": OLLAMA_MODEL,
        "modified_at": "2026-11-30T09:12:45.123456789Z", "size": 1321098329,
        "digest": "baf6a787fdffd633537aa2eb51cfd54cb93ff08e28040095462bb63daf552878",
        "details": {"parent_model": "", "format": "gguf", "family": "llama",
                    "families": ["llama"], "parameter_size": "1.2B",
                    "quantization_level": "Q8_0"},
    }]}  # fmt: skip


def _completion(kind: str, model: str, text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-412", "object": "chat.completion", "created": int(time.time()),
        "model": model, "system_fingerprint": f"fp_{kind}",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15},
    }  # fmt: skip


async def _frames(kind: str, model: str, text: str) -> Any:
    base = {"id": "chatcmpl-412", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model, "system_fingerprint": f"fp_{kind}"}  # fmt: skip
    for word in text.split(" "):
        delta = {"index": 0, "delta": {"role": "assistant", "content": word + " "},
                 "finish_reason": None}  # fmt: skip
        yield b"data: " + orjson.dumps({**base, "choices": [delta]}) + b"\n\n"
    end = {"index": 0, "delta": {}, "finish_reason": "stop"}
    yield b"data: " + orjson.dumps({**base, "choices": [end]}) + b"\n\n"
    yield b"data: [DONE]\n\n"
