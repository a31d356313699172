"""Requests that need translating: chat to a cloud provider, or another dialect to a node.

The local hot path (``api.client.ClientRoutes`` to ``Forwarder``, bytes in and bytes out)
never comes here. This module speaks chat as dicts: a request goes to a node as a chat
request or to a provider through its module in ``llmlb.translate.providers``, and the answer
comes back as a ``chat.completion`` or a stream of chunks, for the endpoint's dialect to
render. Requests a provider speaks natively (``openai:`` on ``/v1/responses``, ``anthropic:``
on ``/v1/messages``) are relayed as they are, the model renamed. Every call is recorded in
history and metrics like a node's, with the provider in the node's place.

A little over 400 lines: the local and cloud halves share the recording and the reading of
answers, and the provider-specific parts already live in ``llmlb.translate.providers``.

Longer than most modules on purpose: it is the one path for every translated request (whole
and streamed, to a provider or to a node), and the settling of each (history, limits,
metrics, the client's abandonment) must be the same for all; split by destination, each
copy would have to keep those in step.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from llmlb.common import tracing
from llmlb.common.errors import (
    BadRequest,
    LlmlbError,
    RelayedError,
    UpstreamFailed,
    UpstreamTimeout,
)
from llmlb.common.settings import RouterSettings
from llmlb.router.cloud.clouds import CloudCall, Clouds, prefix_of
from llmlb.router.proxy.failover import Answer
from llmlb.router.proxy.forwarding import MAX_MODEL_NAME, Forwarder, Outcome
from llmlb.router.proxy.routing import Routed
from llmlb.router.proxy.usage import usage_in
from llmlb.router.telemetry.history import Who
from llmlb.translate import chat
from llmlb.translate.providers.base import (
    MALFORMED_EVENT,
    Provider,
    StreamFailed,
    StreamTranslator,
)
from llmlb.translate.shapes import checked_chunk, checked_completion
from llmlb.translate.sse import ServerEvent, SSEParser, StreamBroken


@dataclass(frozen=True)
class Caller:
    request_id: str
    who: Who
    headers: dict[str, str]  # trace headers to pass on to a node


@dataclass
class ChatReply:
    """A chat answer from a node or a provider: whole, or a stream of chunks."""

    target: str  # the node's name or the provider's
    whole: dict[str, Any] | None = None
    chunks: AsyncGenerator[dict[str, Any], None] | None = None
    ignored: list[str] = field(default_factory=list)  # request fields the target lacks
    attempts: int = 1
    context: int = 0  # the node's context in tokens (0: a provider's, or not said)


@dataclass
class Relayed:
    """A provider's own answer, relayed as bytes."""

    target: str
    status: int
    content_type: str
    body: bytes = b""
    chunks: AsyncGenerator[bytes, None] | None = None
    attempts: int = 1


def model_of(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' is required and must be a non-empty string", param="model")
    if len(model) > MAX_MODEL_NAME:
        raise BadRequest(f"'model' is longer than {MAX_MODEL_NAME} characters", param="model")
    return model


class Gateway:
    def __init__(self, settings: RouterSettings, forwarder: Forwarder, clouds: Clouds) -> None:
        self._settings = settings
        self._forwarder = forwarder
        self._clouds = clouds

    async def chat(self, endpoint: str, body: dict[str, Any], caller: Caller) -> ChatReply:
        model = model_of(body)
        stream = body.get("stream") is True
        prefix = prefix_of(model)
        if prefix is None:
            return await self._local_chat(endpoint, body, stream, caller)
        provider = self._clouds.provider(prefix)
        return await self._cloud_chat(endpoint, provider, model, body, stream, caller)

    async def completion(self, endpoint: str, body: dict[str, Any], caller: Caller) -> ChatReply:
        """A text completion (``/v1/completions``, no chat template) from a node, its choices
        carrying ``text``: Ollama's raw prompts. Local models only."""
        model = model_of(body)
        if prefix_of(model) is not None:
            raise BadRequest(f"raw prompts are for the fleet's models, not {prefix_of(model)}'s",
                             param="raw")  # fmt: skip
        return await self._local_chat(endpoint, body, body.get("stream") is True, caller,
                                      "/v1/completions")  # fmt: skip

    def speaks(self, model: str, path: str) -> bool:
        """Whether ``model``'s provider takes ``path``'s requests as they are."""
        prefix = prefix_of(model)
        return prefix is not None and path in self._clouds.provider(prefix).passthrough

    # -- nodes -----------------------------------------------------------------------------

    async def _local_chat(
        self, endpoint: str, body: dict[str, Any], stream: bool, caller: Caller,
        path: str = "/v1/chat/completions",
    ) -> ChatReply:  # fmt: skip
        request = {**body, "stream": stream}
        if stream:
            request["stream_options"] = {"include_usage": True}
        routed = self._forwarder.route(endpoint, path, orjson.dumps(request))
        answer = await self._forwarder.forward(
            routed, caller.headers, caller.who, caller.request_id
        )
        name, context = answer.node.name, answer.node.load.ctx_size
        if answer.chunks is None:
            if answer.status != 200:
                raise _node_error(answer.status, answer.body)
            return ChatReply(name, whole=_node_answer(name, answer.body),
                             attempts=answer.attempts, context=context)  # fmt: skip
        if answer.status != 200 or not stream:  # an answer too large to buffer: read it whole
            async with contextlib.aclosing(answer.chunks) as rest:
                whole = b"".join([piece async for piece in rest])
            if answer.status != 200:
                raise _node_error(answer.status, whole)
            return ChatReply(name, whole=_node_answer(name, whole), attempts=answer.attempts,
                             context=context)  # fmt: skip
        return ChatReply(name, chunks=_node_chunks(name, answer.chunks),
                         attempts=answer.attempts, context=context)  # fmt: skip

    async def count_tokens(self, request: dict[str, Any], caller: Caller) -> dict[str, Any]:
        """``{"input_tokens": n}`` for a chat request to a local model: counted by a node
        that holds the model, with its template (the node's ``/api/count_tokens``)."""
        routed = self._forwarder.route("count_tokens", "/api/count_tokens", orjson.dumps(request))
        answer, body = await self._whole(routed, caller)
        try:
            counted = orjson.loads(body)
            return {"input_tokens": int(counted["input_tokens"])}
        except (ValueError, KeyError, TypeError):
            raise UpstreamFailed(f"node {answer.node.name} sent a malformed count") from None

    async def _whole(self, routed: Routed, caller: Caller) -> tuple[Answer, bytes]:
        """A node's whole answer (read to its end where it came as a stream); its own error
        raised as the router's."""
        answer = await self._forwarder.forward(
            routed, caller.headers, caller.who, caller.request_id
        )
        body = answer.body
        if answer.chunks is not None:  # (a large answer comes as it is sent)
            async with contextlib.aclosing(answer.chunks) as rest:
                body = b"".join([piece async for piece in rest])
        if answer.status != 200:
            raise _node_error(answer.status, body)
        return answer, body

    async def embeddings(
        self, endpoint: str, request: dict[str, Any], caller: Caller
    ) -> tuple[str, int, dict[str, Any]]:
        """An embeddings answer from a node for a local model: (the node's name, attempts,
        the answer)."""
        model = model_of(request)
        if prefix_of(model) is not None:
            raise BadRequest(f"{prefix_of(model)} models are embedded on /v1/embeddings",
                             param="model")  # fmt: skip
        routed = self._forwarder.route(endpoint, "/v1/embeddings", orjson.dumps(request))
        answer, body = await self._whole(routed, caller)
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise UpstreamFailed(f"node {answer.node.name} sent malformed embeddings") from None
        if not isinstance(parsed, dict):
            raise UpstreamFailed(f"node {answer.node.name} sent malformed embeddings")
        return answer.node.name, answer.attempts, parsed

    # -- clouds ----------------------------------------------------------------------------

    def _routed(self, endpoint: str, model: str, stream: bool, body: dict[str, Any]) -> Routed:
        kept = orjson.dumps(body) if self._settings.log_bodies else b""
        return Routed(endpoint, "", model, stream, kept)

    async def _cloud_call(
        self, routed: Routed, provider: Provider, path: str, payload: dict[str, Any],
        caller: Caller, started: float,
    ) -> CloudCall:  # fmt: skip
        try:
            if tracing.ENABLED:
                with tracing.span("llmlb.cloud", "client", provider=provider.name,
                                  path=path) as current:  # fmt: skip
                    try:
                        call = await self._clouds.post(provider, path, orjson.dumps(payload))
                    except LlmlbError as exc:
                        tracing.failed(current, exc.message)
                        raise
                    return call
            return await self._clouds.post(provider, path, orjson.dumps(payload))
        except LlmlbError as exc:
            self._record(routed, caller, started, provider, exc.status, error=exc.message)
            raise
        except BaseException:
            self._record(routed, caller, started, provider, 499, error="client left")
            raise

    async def _cloud_chat(
        self, endpoint: str, provider: Provider, model: str, body: dict[str, Any],
        stream: bool, caller: Caller,
    ) -> ChatReply:  # fmt: skip
        name = model[len(provider.name) + 1 :]
        if not name:
            raise BadRequest(f"name a model after '{provider.name}:'", param="model")
        body = chat.check_request(body)
        request = provider.chat_request(body, name, stream)
        routed = self._routed(endpoint, model, stream, body)
        started = time.monotonic()
        call = await self._cloud_call(routed, provider, request.path, request.payload, caller,
                                      started)  # fmt: skip
        if stream:
            chunks = self._cloud_chunks(call, provider.chat_stream(name), routed, caller, started)
            return ChatReply(provider.name, chunks=chunks, ignored=request.ignored,
                             attempts=call.attempts)  # fmt: skip
        try:
            whole = provider.chat_answer(await self._clouds.read_json(call), name)
        except LlmlbError as exc:
            self._record(routed, caller, started, provider, exc.status, error=exc.message)
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            error = UpstreamFailed(f"{provider.name} sent an answer of an unexpected shape "
                                   f"({type(exc).__name__})", code="provider_error")  # fmt: skip
            self._record(routed, caller, started, provider, error.status, error=error.message)
            raise error from None
        self._record(routed, caller, started, provider, 200, usage=whole.get("usage") or {},
                     first_byte_at=time.monotonic(), attempts=call.attempts)  # fmt: skip
        return ChatReply(provider.name, whole=whole, ignored=request.ignored,
                         attempts=call.attempts)  # fmt: skip

    async def _cloud_chunks(
        self, call: CloudCall, translator: StreamTranslator, routed: Routed, caller: Caller,
        started: float,
    ) -> AsyncGenerator[dict[str, Any], None]:  # fmt: skip
        provider = call.provider.name
        status, error, first = 200, None, None
        try:
            async with contextlib.aclosing(self._events_of(call)) as events:
                async for event in events:
                    try:
                        chunks = translator.feed(event)
                    except StreamFailed as exc:
                        raise UpstreamFailed(
                            f"{provider} reported an error mid-stream: "
                            f"{self._clouds.scrub(str(exc))}"
                        ) from None
                    except MALFORMED_EVENT:
                        raise UpstreamFailed(f"{provider} sent a malformed event") from None
                    for piece in chunks:
                        first = first or time.monotonic()
                        yield piece
                    if translator.finished:
                        return
            raise UpstreamFailed(f"{provider}'s stream ended before its final event")
        except LlmlbError as exc:
            status, error = exc.status, exc.message
            raise
        except BaseException:
            status, error = 499, "client left"
            raise
        finally:
            call.close()
            self._record(
                routed,
                caller,
                started,
                call.provider,
                status,
                error=error,
                usage=translator.usage,
                first_byte_at=first,
                attempts=call.attempts,
            )

    async def _events_of(self, call: CloudCall) -> AsyncGenerator[ServerEvent, None]:
        parser = SSEParser()
        try:
            async for raw in self._body_of(call):
                for event in parser.feed(raw):
                    yield event
            for event in parser.finish():
                yield event
        except StreamBroken as exc:
            raise UpstreamFailed(f"{call.provider.name} sent a broken stream: {exc}") from None

    async def _body_of(self, call: CloudCall) -> AsyncGenerator[bytes, None]:
        """A provider's stream as it comes; a stall or a cut is a 504 or a 502."""
        provider = call.provider.name
        try:
            async for raw in call.response.content.iter_any():
                yield raw
        except TimeoutError:
            raise UpstreamTimeout(f"{provider} sent nothing for "
                                  f"{self._settings.request_timeout:g} s") from None  # fmt: skip
        except aiohttp.ClientError as exc:
            raise UpstreamFailed(f"{provider} broke off its stream: {type(exc).__name__}") from None

    async def relay(self, endpoint: str, path: str, body: dict[str, Any],
                    caller: Caller) -> Relayed:  # fmt: skip
        """A request the provider speaks natively: relayed with the model renamed."""
        model = model_of(body)
        prefix = prefix_of(model)
        assert prefix is not None
        provider = self._clouds.provider(prefix)
        stream = body.get("stream") is True
        routed = self._routed(endpoint, model, stream, body)
        started = time.monotonic()
        payload = {**body, "model": model[len(prefix) + 1 :]}
        call = await self._cloud_call(routed, provider, provider.passthrough[path], payload,
                                      caller, started)  # fmt: skip
        content_type = call.response.headers.get("content-type", "application/json")
        if stream:
            chunks = self._relayed_chunks(call, routed, caller, started)
            return Relayed(provider.name, 200, content_type, chunks=chunks,
                           attempts=call.attempts)  # fmt: skip
        try:
            data = await self._clouds.read_json(call)
        except LlmlbError as exc:
            self._record(routed, caller, started, provider, exc.status, error=exc.message)
            raise
        raw = orjson.dumps(data)
        usage: dict[str, int] = {}
        usage_in(raw, usage)
        self._record(routed, caller, started, provider, 200, usage=usage,
                     first_byte_at=time.monotonic(), attempts=call.attempts)  # fmt: skip
        return Relayed(provider.name, 200, "application/json", body=raw, attempts=call.attempts)

    async def _relayed_chunks(
        self, call: CloudCall, routed: Routed, caller: Caller, started: float
    ) -> AsyncGenerator[bytes, None]:
        usage: dict[str, int] = {}
        status, error, first, tail = 200, None, None, b""
        try:
            async for raw in self._body_of(call):
                first = first or time.monotonic()
                usage_in(tail + raw, usage)  # a count may straddle two reads
                tail = raw[-64:]
                yield raw
        except LlmlbError as exc:
            status, error = exc.status, exc.message
            yield call.provider.stream_error(exc.message)
        except BaseException:
            status, error = 499, "client left"
            raise
        finally:
            call.close()
            self._record(routed, caller, started, call.provider, status, error=error,
                         usage=usage, first_byte_at=first, attempts=call.attempts)  # fmt: skip

    def _record(
        self, routed: Routed, caller: Caller, started: float, provider: Provider, status: int,
        *, error: str | None = None, usage: dict[str, int] | None = None,
        first_byte_at: float | None = None, attempts: int = 1,
    ) -> None:  # fmt: skip
        outcome = Outcome(status, provider.name, provider.name, usage or {}, first_byte_at,
                          attempts, error, node_name=provider.name)  # fmt: skip
        self._forwarder.record(routed, caller.request_id, caller.who, started, outcome)


def _node_answer(node: str, body: bytes) -> dict[str, Any]:
    """A node's whole chat answer, checked (a node may misbehave)."""
    try:
        return checked_completion(orjson.loads(body))
    except ValueError as exc:
        raise UpstreamFailed(f"node {node} sent a malformed answer: {exc}") from None


async def _node_chunks(
    node: str, chunks: AsyncGenerator[bytes, None]
) -> AsyncGenerator[dict[str, Any], None]:
    """A node's chat stream as checked chunk dicts; an error event, or bytes that are not
    such a stream, raise."""
    parser = SSEParser()
    async with contextlib.aclosing(chunks) as relay:
        async for raw in relay:
            try:
                events = parser.feed(raw)
            except StreamBroken as exc:
                raise UpstreamFailed(f"node {node} sent a broken stream: {exc}") from None
            for event in events:
                if event.data == "[DONE]":
                    return
                yield _node_chunk(node, event)
    raise UpstreamFailed(f"node {node}'s stream ended before [DONE]")


def _node_chunk(node: str, event: ServerEvent) -> dict[str, Any]:
    try:
        data = event.json()
        if isinstance(data, dict) and "error" in data:
            error = data["error"]
            message = error.get("message") if isinstance(error, dict) else None
            raise UpstreamFailed(str(message or "the node failed")[:1000])
        return checked_chunk(data)
    except ValueError as exc:
        raise UpstreamFailed(f"node {node} sent a malformed event: {exc}") from None


def _node_error(status: int, body: bytes) -> RelayedError:
    """A node's error answer (OpenAI's shape) as an error to raise."""
    try:
        error = orjson.loads(body)["error"]
        relayed = RelayedError(str(error["message"]), status=status,
                               error_type=error.get("type"), code=error.get("code"))  # fmt: skip
        param = error.get("param")
        relayed.param = param if isinstance(param, str) and len(param) <= 100 else None
        return relayed
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return RelayedError(body[:200].decode(errors="replace") or "the node failed",
                            status=status)  # fmt: skip
