"""Loopback stand-ins for OpenAI, Anthropic and Google (Gemini), in their own wire formats.

One server, three base URLs: ``<url>/openai/v1``, ``<url>/anthropic``, ``<url>/google``. Each
checks its key header, records every request, and answers by the model's name:

- any name: a text answer that quotes the last user text; with tools and no tool result yet,
  a call of the first tool with ``{"city": "Paris"}``; after a tool result, a text quoting it
- ``limited``: 429 with ``Retry-After: 0`` twice, then as above
- ``refused``: 400 in the provider's error shape
- ``down``: 503 every time
- ``broken``: a whole answer cut off mid-JSON; a stream that stops before its final event
- ``hang``: headers never come
- ``stall``: a stream that sends its first event and then nothing

Streams are sent the way each provider frames them: OpenAI's ``data:`` lines and ``[DONE]``,
Anthropic's named events with ``ping``, Gemini's ``alt=sse`` events separated by CRLF.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tests.support import ThreadServer

KEYS = {"openai": "sk-fake-openai-0123456789", "anthropic": "sk-ant-fake-0123456789",
        "google": "AIzaFakeGoogleKey0123456789"}  # fmt: skip
TOOL_ARGUMENTS = {"city": "Paris"}
GEMINI_CALL_ID = "3ae8iwca"
GEMINI_SIGNATURE = "EukBCuYBAdHtim9+/sig=="  # Gemini 3 sends one with each function call


@dataclass
class Seen:
    provider: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


def _sse(data: Any, event: str | None = None, end: bytes = b"\n\n") -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + orjson.dumps(data) + end


def _pieces(text: str) -> list[str]:
    words = text.split(" ")
    return [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]


@dataclass
class Plan:
    """What to answer: text, or one tool call."""

    text: str = ""
    tool: str | None = None
    prompt_tokens: int = 11
    completion_tokens: int = 7


@dataclass
class FakeClouds:
    calls: Counter[str] = field(default_factory=Counter)
    seen: list[Seen] = field(default_factory=list)
    url: str = ""
    _limited: Counter[str] = field(default_factory=Counter)
    _server: ThreadServer | None = None

    def base_urls(self) -> dict[str, str]:
        return {"openai": f"{self.url}/openai/v1", "anthropic": f"{self.url}/anthropic",
                "google": f"{self.url}/google"}  # fmt: skip

    def env(self) -> dict[str, str]:
        """The router's settings for these fakes, in the providers' usual variables."""
        bases = self.base_urls()
        return {f"{p.upper()}_{kind}": value for p in KEYS
                for kind, value in (("API_KEY", KEYS[p]), ("BASE_URL", bases[p]))}  # fmt: skip

    def last(self, provider: str) -> Seen:
        return next(s for s in reversed(self.seen) if s.provider == provider)

    # -- shared behaviour ------------------------------------------------------------------

    async def _gate(
        self, provider: str, request: Request, model: str, body: dict[str, Any]
    ) -> Response | None:
        """Record the call; an error answer when the key or the model asks for one."""
        self.calls[provider] += 1
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.seen.append(Seen(provider, request.url.path, headers, body))
        key = {"openai": headers.get("authorization", "").removeprefix("Bearer "),
               "anthropic": headers.get("x-api-key"),
               "google": headers.get("x-goog-api-key")}[provider]  # fmt: skip
        if key != KEYS[provider]:
            return self._error(provider, 401, "invalid api key")
        if model == "limited" and self._limited[provider] < 2:
            self._limited[provider] += 1
            return self._error(provider, 429, "rate limited", {"retry-after": "0"})
        if model == "refused":
            return self._error(provider, 400, f"{provider} refuses this request")
        if model == "down":
            return self._error(provider, 503, "the service is down")
        if model == "hang":
            await asyncio.sleep(3600)
        return None

    def _error(
        self, provider: str, status: int, message: str, headers: dict[str, str] | None = None
    ) -> Response:
        if provider == "anthropic":
            kinds = {400: "invalid_request_error", 401: "authentication_error",
                     429: "rate_limit_error", 503: "api_error"}  # fmt: skip
            body: dict[str, Any] = {
                "type": "error",
                "error": {"type": kinds[status], "message": message},
            }
        elif provider == "google":
            statuses = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED",
                        429: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE"}  # fmt: skip
            body = {"error": {"code": status, "message": message, "status": statuses[status]}}
        else:
            kinds = {400: "invalid_request_error", 401: "invalid_request_error",
                     429: "requests", 503: "server_error"}  # fmt: skip
            body = {"error": {"message": message, "type": kinds[status], "param": None,
                              "code": "invalid_api_key" if status == 401 else None}}  # fmt: skip
        return Response(orjson.dumps(body), status, headers=headers,
                        media_type="application/json")  # fmt: skip

    @staticmethod
    def _plan(last_user: str, tools: list[str], tool_result: str | None, provider: str) -> Plan:
        if tool_result is not None:
            return Plan(text=f"The tool said {tool_result}")
        if tools:
            return Plan(tool=tools[0])
        return Plan(text=f"Hello from {provider}: {last_user}")

    # -- OpenAI ----------------------------------------------------------------------------

    async def _openai_chat(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        model = str(body.get("model"))
        if (refusal := await self._gate("openai", request, model, body)) is not None:
            return refusal
        messages = body["messages"]
        users = [m for m in messages if m["role"] == "user"]
        content = users[-1]["content"] if users else ""
        if isinstance(content, list):
            content = " ".join(p.get("text", "") for p in content if p["type"] == "text")
        results = [m["content"] for m in messages if m["role"] == "tool"]
        tools = [t["function"]["name"] for t in body.get("tools") or []]
        plan = self._plan(content, tools, results[-1] if results else None, "openai")
        id_, created, name = "chatcmpl-Fake0001", int(time.time()), f"{model}-2024-07-18"
        usage = {"prompt_tokens": plan.prompt_tokens, "completion_tokens":
                 plan.completion_tokens, "total_tokens": plan.prompt_tokens +
                 plan.completion_tokens, "prompt_tokens_details": {"cached_tokens": 0,
                 "audio_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0,
                 "audio_tokens": 0, "accepted_prediction_tokens": 0,
                 "rejected_prediction_tokens": 0}}  # fmt: skip
        call = {
            "id": "call_Fake0001",
            "type": "function",
            "function": {"name": plan.tool, "arguments": orjson.dumps(TOOL_ARGUMENTS).decode()},
        }
        finish = "tool_calls" if plan.tool else "stop"
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": plan.text or None,
                                       "refusal": None, "annotations": []}  # fmt: skip
            if plan.tool:
                message["tool_calls"] = [call]
            answer = orjson.dumps({"id": id_, "object": "chat.completion", "created": created,
                                   "model": name, "choices": [{"index": 0, "message": message,
                                   "logprobs": None, "finish_reason": finish}], "usage": usage,
                                   "service_tier": "default",
                                   "system_fingerprint": "fp_fake"})  # fmt: skip
            if model == "broken":
                answer = answer[: len(answer) // 2]
            return Response(answer, media_type="application/json")
        with_usage = (body.get("stream_options") or {}).get("include_usage") is True

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            data: dict[str, Any] = {"id": id_, "object": "chat.completion.chunk",
                                    "created": created, "model": name, "service_tier": "default",
                                    "system_fingerprint": "fp_fake", "choices": [{"index": 0,
                                    "delta": delta, "logprobs": None,
                                    "finish_reason": finish_reason}]}  # fmt: skip
            if with_usage:
                data["usage"] = None
            return _sse(data)

        async def events() -> AsyncIterator[bytes]:
            if plan.tool:
                yield chunk(
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": call["id"],
                                "type": "function",
                                "function": {"name": plan.tool, "arguments": ""},
                            }
                        ],
                        "refusal": None,
                    }
                )
                arguments = call["function"]["arguments"]  # type: ignore[index]
                for piece in (arguments[:5], arguments[5:]):
                    yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
            else:
                yield chunk({"role": "assistant", "content": "", "refusal": None})
                for piece in _pieces(plan.text):
                    yield chunk({"content": piece})
                    if model == "stall":
                        await asyncio.sleep(3600)
            if model == "broken":
                return
            yield chunk({}, finish)
            if with_usage:
                yield _sse(
                    {
                        "id": id_,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": name,
                        "service_tier": "default",
                        "system_fingerprint": "fp_fake",
                        "choices": [],
                        "usage": usage,
                    }
                )
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def _openai_passthrough(self, request: Request) -> Response:
        """Embeddings and Responses, enough to see that they arrive as sent."""
        body = orjson.loads(await request.body())
        model = str(body.get("model"))
        if (refusal := await self._gate("openai", request, model, body)) is not None:
            return refusal
        if request.url.path.endswith("/embeddings"):
            data = {"object": "list", "model": model, "usage": {"prompt_tokens": 2,
                    "total_tokens": 2}, "data": [{"object": "embedding", "index": 0,
                    "embedding": [0.25, -0.5, 0.125]}]}  # fmt: skip
            return Response(orjson.dumps(data), media_type="application/json")
        usage = {"input_tokens": 5,
                 "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                 "output_tokens": 3, "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": 8}  # fmt: skip
        text = f"Hello from openai responses: {body.get('input')}"
        response = {"id": "resp_fake", "object": "response", "created_at": time.time(),
                    "status": "completed", "model": model, "output": [{"type": "message",
                    "id": "msg_fake", "status": "completed", "role": "assistant", "content": [
                        {"type": "output_text", "text": text, "annotations": []}]}],
                    "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
                    "usage": usage}  # fmt: skip
        if not body.get("stream"):
            return Response(orjson.dumps(response), media_type="application/json")

        async def events() -> AsyncIterator[bytes]:
            yield _sse({"type": "response.created", "sequence_number": 0,
                        "response": {**response, "status": "in_progress", "output": [],
                                     "usage": None}}, "response.created")  # fmt: skip
            yield _sse({"type": "response.output_text.delta", "sequence_number": 1,
                        "item_id": "msg_fake", "output_index": 0, "content_index": 0,
                        "delta": text, "logprobs": []}, "response.output_text.delta")  # fmt: skip
            yield _sse({"type": "response.completed", "sequence_number": 2,
                        "response": response}, "response.completed")  # fmt: skip

        return StreamingResponse(events(), media_type="text/event-stream")

    async def _openai_models(self, request: Request) -> Response:
        if request.headers.get("authorization") != f"Bearer {KEYS['openai']}":
            return self._error("openai", 401, "invalid api key")
        data = [{"id": m, "object": "model", "created": 1700000000, "owned_by": "system"}
                for m in ("gpt-4o-mini", "text-embedding-3-small")]  # fmt: skip
        return Response(orjson.dumps({"object": "list", "data": data}),
                        media_type="application/json")  # fmt: skip

    # -- Anthropic -------------------------------------------------------------------------

    async def _anthropic_messages(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        model = str(body.get("model"))
        if (refusal := await self._gate("anthropic", request, model, body)) is not None:
            return refusal
        if request.headers.get("anthropic-version") != "2023-06-01":
            return self._error("anthropic", 400, "anthropic-version header is required")
        turns = body["messages"]
        last = turns[-1]["content"]
        blocks = [{"type": "text", "text": last}] if isinstance(last, str) else last
        results = [b for b in blocks if b.get("type") == "tool_result"]
        user_text = " ".join(b["text"] for b in blocks if b.get("type") == "text")
        tools = [t["name"] for t in body.get("tools") or []]
        result = None
        if results:
            content = results[-1]["content"]
            result = content if isinstance(content, str) else content[0]["text"]
        plan = self._plan(user_text, tools, result, "anthropic")
        id_, name = "msg_01FakeAnthropic", f"{model}-20250219"
        use = {"type": "tool_use", "id": "toolu_01Fake", "name": plan.tool,
               "input": TOOL_ARGUMENTS}  # fmt: skip
        stop = "tool_use" if plan.tool else "end_turn"
        usage = {"input_tokens": plan.prompt_tokens, "cache_creation_input_tokens": 0,
                 "cache_read_input_tokens": 0, "output_tokens": plan.completion_tokens,
                 "service_tier": "standard"}  # fmt: skip
        if not body.get("stream"):
            content_blocks = [use] if plan.tool else [{"type": "text", "text": plan.text}]
            answer = orjson.dumps({"id": id_, "type": "message", "role": "assistant",
                                   "model": name, "content": content_blocks,
                                   "stop_reason": stop, "stop_sequence": None,
                                   "usage": usage})  # fmt: skip
            if model == "broken":
                answer = answer[: len(answer) // 2]
            return Response(answer, media_type="application/json")

        async def events() -> AsyncIterator[bytes]:
            start: dict[str, Any] = {
                "id": id_, "type": "message", "role": "assistant", "model": name,
                "content": [], "stop_reason": None, "stop_sequence": None,
                "usage": {**usage, "output_tokens": 1},
            }  # fmt: skip
            yield _sse({"type": "message_start", "message": start}, "message_start")
            if plan.tool:
                yield _sse(
                    {
                        "type": "content_block_start",
                        "index": 0,
                        "content_block": {**use, "input": {}},
                    },
                    "content_block_start",
                )
                yield _sse({"type": "ping"}, "ping")
                arguments = orjson.dumps(TOOL_ARGUMENTS).decode()
                for piece in ("", arguments[:5], arguments[5:]):
                    yield _sse({"type": "content_block_delta", "index": 0, "delta": {
                        "type": "input_json_delta", "partial_json": piece}},
                        "content_block_delta")  # fmt: skip
            else:
                yield _sse({"type": "content_block_start", "index": 0,
                            "content_block": {"type": "text", "text": ""}},
                           "content_block_start")  # fmt: skip
                yield _sse({"type": "ping"}, "ping")
                for piece in _pieces(plan.text):
                    yield _sse({"type": "content_block_delta", "index": 0,
                                "delta": {"type": "text_delta", "text": piece}},
                               "content_block_delta")  # fmt: skip
                    if model == "stall":
                        await asyncio.sleep(3600)
            if model == "broken":
                return
            yield _sse({"type": "content_block_stop", "index": 0}, "content_block_stop")
            yield _sse({"type": "message_delta", "delta": {"stop_reason": stop,
                        "stop_sequence": None}, "usage": {"output_tokens":
                        plan.completion_tokens}}, "message_delta")  # fmt: skip
            yield _sse({"type": "message_stop"}, "message_stop")

        return StreamingResponse(events(), media_type="text/event-stream")

    async def _anthropic_models(self, request: Request) -> Response:
        if request.headers.get("x-api-key") != KEYS["anthropic"]:
            return self._error("anthropic", 401, "invalid x-api-key")
        page = int(request.query_params.get("after_id", "claude-0").rsplit("-", 1)[1])
        data = [{"type": "model", "id": f"claude-{page + 1}", "display_name": "Claude",
                 "created_at": "2025-02-19T00:00:00Z"}]  # fmt: skip
        more = page + 1 < 2  # two pages of one model each
        body = {"data": data, "has_more": more, "first_id": data[0]["id"],
                "last_id": data[-1]["id"]}  # fmt: skip
        return Response(orjson.dumps(body), media_type="application/json")

    # -- Google ----------------------------------------------------------------------------

    async def _google_generate(self, request: Request) -> Response:
        target = request.path_params["target"]
        model, _, method = target.partition(":")
        body = orjson.loads(await request.body())
        if (refusal := await self._gate("google", request, model, body)) is not None:
            return refusal
        contents = body["contents"]
        for part in (p for c in contents for p in c["parts"] if "functionCall" in p):
            # As Gemini 3 does: a call in the history must come back with its signature.
            if (part.get("thoughtSignature"), part["functionCall"].get("id")) != (
                    GEMINI_SIGNATURE, GEMINI_CALL_ID):  # fmt: skip
                return self._error("google", 400, "Function call is missing a "
                                   "thought_signature in functionCall parts")  # fmt: skip
        parts = contents[-1]["parts"]
        user_text = " ".join(p["text"] for p in parts if "text" in p)
        responses = [p["functionResponse"] for p in parts if "functionResponse" in p]
        tools = [d["name"] for t in body.get("tools") or [] for d in t["functionDeclarations"]]
        result = str(responses[-1]["response"].get("content", responses[-1]["response"])) if (
            responses) else None  # fmt: skip
        plan = self._plan(user_text, tools, result, "google")
        usage = {"promptTokenCount": plan.prompt_tokens, "candidatesTokenCount":
                 plan.completion_tokens, "totalTokenCount": plan.prompt_tokens +
                 plan.completion_tokens, "promptTokensDetails": [{"modality": "TEXT",
                 "tokenCount": plan.prompt_tokens}]}  # fmt: skip

        def response(answer_parts: list[dict[str, Any]], finish: str | None,
                     with_usage: bool) -> dict[str, Any]:  # fmt: skip
            candidate: dict[str, Any] = {"content": {"parts": answer_parts, "role": "model"},
                                         "index": 0}  # fmt: skip
            if finish:
                candidate["finishReason"] = finish
            data: dict[str, Any] = {"candidates": [candidate], "modelVersion": model,
                                    "responseId": "FakeGoogleResponse1"}  # fmt: skip
            if with_usage:
                data["usageMetadata"] = usage
            return data

        call_part = {"functionCall": {"name": plan.tool, "args": TOOL_ARGUMENTS,
                                      "id": GEMINI_CALL_ID},
                     "thoughtSignature": GEMINI_SIGNATURE}  # fmt: skip
        if method == "generateContent":
            answer_parts = [call_part] if plan.tool else [{"text": plan.text}]
            answer = orjson.dumps(response(answer_parts, "STOP", True))
            if model == "broken":
                answer = answer[: len(answer) // 2]
            return Response(answer, media_type="application/json")
        if request.query_params.get("alt") != "sse":
            return self._error("google", 400, "this fake streams with alt=sse only")

        async def events() -> AsyncIterator[bytes]:
            if plan.tool:
                yield _sse(response([call_part], "STOP", True), end=b"\r\n\r\n")
                return
            pieces = _pieces(plan.text)
            for index, piece in enumerate(pieces):
                final = index == len(pieces) - 1
                if final and model == "broken":
                    return
                yield _sse(response([{"text": piece}], "STOP" if final else None, final),
                           end=b"\r\n\r\n")  # fmt: skip
                if model == "stall":
                    await asyncio.sleep(3600)

        return StreamingResponse(events(), media_type="text/event-stream")

    async def _google_models(self, request: Request) -> Response:
        if request.headers.get("x-goog-api-key") != KEYS["google"]:
            return self._error("google", 401, "API key not valid")
        models = [{"name": "models/gemini-2.0-flash", "version": "2.0", "displayName": "Gemini",
                   "supportedGenerationMethods": ["generateContent", "countTokens"]},
                  {"name": "models/text-embedding-004", "version": "004",
                   "supportedGenerationMethods": ["embedContent"]}]  # fmt: skip
        return Response(orjson.dumps({"models": models}), media_type="application/json")

    # -- server ----------------------------------------------------------------------------

    def _guarded(self, provider: str, handler: Any) -> Any:
        """The handler, answering 400 in the provider's shape for a request it cannot read
        (as the real APIs do) instead of crashing."""

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)  # type: ignore[no-any-return]
            except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
                return self._error(provider, 400, f"invalid request: {type(exc).__name__}")

        return guarded

    def start(self) -> FakeClouds:
        routes = [
            Route(
                "/openai/v1/chat/completions",
                self._guarded("openai", self._openai_chat),
                methods=["POST"],
            ),
            Route(
                "/openai/v1/embeddings",
                self._guarded("openai", self._openai_passthrough),
                methods=["POST"],
            ),
            Route(
                "/openai/v1/responses",
                self._guarded("openai", self._openai_passthrough),
                methods=["POST"],
            ),
            Route("/openai/v1/models", self._openai_models, methods=["GET"]),
            Route(
                "/anthropic/v1/messages",
                self._guarded("anthropic", self._anthropic_messages),
                methods=["POST"],
            ),
            Route("/anthropic/v1/models", self._anthropic_models, methods=["GET"]),
            Route(
                "/google/v1beta/models/{target}",
                self._guarded("google", self._google_generate),
                methods=["POST"],
            ),
            Route("/google/v1beta/models", self._google_models, methods=["GET"]),
        ]
        self._server = ThreadServer(Starlette(routes=routes))
        self.url = self._server.url
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
