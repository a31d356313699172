"""Client requests that need translation: cloud models on the OpenAI endpoints, and the
Responses and Messages dialects for any model (handlers over ``router.cloud.gateway``)."""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator
from typing import Any, Protocol

import orjson
from starlette.responses import Response

from llmlb.common.asgi import StreamRelay
from llmlb.common.chat import whole_numbers
from llmlb.common.errors import BadRequest, LlmlbError
from llmlb.common.wire import parse_object
from llmlb.router.cloud import Caller, ChatReply, Gateway, Relayed, model_of, prefix_of
from llmlb.translate.dialects import messages, responses
from llmlb.translate.sse import DONE, encode


class Dialect(Protocol):
    """A module of ``llmlb.translate.dialects``."""

    # Chat's names for the dialect's fields, as errors from the chat side name them.
    CHAT_FIELDS: dict[str, str]

    def to_chat(self, body: dict[str, Any]) -> tuple[dict[str, Any], list[str]]: ...
    def from_chat(self, answer: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]: ...
    def stream(
        self, chunks: AsyncGenerator[dict[str, Any], None], body: dict[str, Any]
    ) -> AsyncGenerator[bytes, None]: ...


_FIELD_NAME = re.compile(r"[A-Za-z0-9_.]{1,40}")
_MAX_NAMED_FIELDS = 20
_SSE = "text/event-stream"


def reply_headers(target: str, attempts: int, ignored: list[str]) -> dict[str, str]:
    headers = {"x-llmlb-node": target, "x-llmlb-attempts": str(attempts)}
    # Field names come from the client: only plain ones are echoed, and only so many.
    named = [name for name in ignored if _FIELD_NAME.fullmatch(name)][:_MAX_NAMED_FIELDS]
    if named:
        headers["x-llmlb-ignored-fields"] = ",".join(named)
    return headers


def _stream_headers(headers: dict[str, str]) -> dict[str, str]:
    return {**headers, "cache-control": "no-cache", "x-accel-buffering": "no"}


async def cloud(gateway: Gateway, endpoint: str, path: str, raw: bytes,
                caller: Caller) -> Response | StreamRelay:  # fmt: skip
    """An OpenAI endpoint for a model with a provider prefix."""
    body = parse_object(raw)
    if endpoint == "chat":
        reply = await gateway.chat("chat", body, caller)
        return _chat_response(reply, _wants_usage(body))
    model = model_of(body)
    if not gateway.speaks(model, path):
        raise BadRequest(f"{prefix_of(model)} models are served on /v1/chat/completions, "
                         f"/v1/responses and /v1/messages, not on {path}",
                         param="model")  # fmt: skip
    return _relayed(await gateway.relay(endpoint, path, body, caller))


async def serve_responses(gateway: Gateway, raw: bytes, caller: Caller) -> Response | StreamRelay:
    return await _serve_dialect(gateway, raw, caller, "responses", responses)


async def serve_messages(gateway: Gateway, raw: bytes, caller: Caller) -> Response | StreamRelay:
    return await _serve_dialect(gateway, raw, caller, "messages", messages)


async def _serve_dialect(
    gateway: Gateway, raw: bytes, caller: Caller, endpoint: str, dialect: Dialect
) -> Response | StreamRelay:
    """A dialect's request: relayed to a provider that speaks it, else through chat."""
    body = whole_numbers(parse_object(raw))
    model = model_of(body)
    path = f"/v1/{endpoint}"
    if prefix_of(model) is not None and gateway.speaks(model, path):
        return _relayed(await gateway.relay(endpoint, path, body, caller))
    request, ignored = dialect.to_chat(body)
    try:
        reply = await gateway.chat(endpoint, request, caller)
    except LlmlbError as exc:
        raise in_terms_of(exc, dialect.CHAT_FIELDS) from None
    headers = reply_headers(reply.target, reply.attempts, [*ignored, *reply.ignored])
    if reply.chunks is not None:
        return StreamRelay(dialect.stream(reply.chunks, body), 200, _SSE,
                           _stream_headers(headers))  # fmt: skip
    assert reply.whole is not None
    return _json(dialect.from_chat(reply.whole, body), headers)


async def serve_count_tokens(gateway: Gateway, raw: bytes,
                             caller: Caller) -> Response | StreamRelay:  # fmt: skip
    """Anthropic's ``/v1/messages/count_tokens``: relayed to Anthropic for its models,
    counted by a node with the model's template for local ones."""
    body = parse_object(raw)
    model = model_of(body)
    path = "/v1/messages/count_tokens"
    if prefix_of(model) is not None:
        if not gateway.speaks(model, path):
            raise BadRequest(f"{prefix_of(model)} models have no token count here; count "
                             "anthropic: and local models", param="model")  # fmt: skip
        return _relayed(await gateway.relay("count_tokens", path, body, caller))
    counted = await gateway.count_tokens(messages.count_request(body), caller)
    return _json(counted, {})


def in_terms_of(exc: LlmlbError, names: dict[str, str]) -> LlmlbError:
    """``exc`` with chat's field names as the client's dialect calls them (a 400 about
    ``'messages'`` is about ``'input'`` to a Responses client)."""
    for chat_name, own in names.items():
        pattern = re.compile(rf"'{re.escape(chat_name)}(?=['.\[])")
        exc.message = pattern.sub(f"'{own}", exc.message)
        if exc.param is not None and (exc.param == chat_name
                                      or exc.param.startswith(chat_name + ".")):  # fmt: skip
            exc.param = own + exc.param[len(chat_name) :]
    exc.args = (exc.message,)
    return exc


def anthropic_error(exc: LlmlbError) -> Response:
    """An error in both shapes at once: OpenAI's ``error`` object, with Anthropic's
    ``"type": "error"`` beside it (Anthropic's clients read ``error.type``/``message``)."""
    return Response(orjson.dumps({"type": "error", **exc.to_dict()}), exc.status,
                    headers=exc.headers, media_type="application/json")  # fmt: skip


def _wants_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _json(data: dict[str, Any], headers: dict[str, str]) -> Response:
    return Response(orjson.dumps(data), 200, headers=headers, media_type="application/json")


def _chat_response(reply: ChatReply, include_usage: bool) -> Response | StreamRelay:
    headers = reply_headers(reply.target, reply.attempts, reply.ignored)
    if reply.chunks is None:
        assert reply.whole is not None
        return _json(reply.whole, headers)
    return StreamRelay(_chat_events(reply.chunks, include_usage), 200, _SSE,
                       _stream_headers(headers))  # fmt: skip


async def _chat_events(
    chunks: AsyncGenerator[dict[str, Any], None], include_usage: bool
) -> AsyncGenerator[bytes, None]:
    """Chat chunks as OpenAI's SSE; a failure ends the stream with one error event."""
    try:
        async for piece in chunks:
            if piece.get("choices") or include_usage:
                yield encode(piece)
    except LlmlbError as exc:
        yield encode(exc.to_dict())
    finally:
        await chunks.aclose()
    yield DONE


def _relayed(relayed: Relayed) -> Response | StreamRelay:
    headers = reply_headers(relayed.target, relayed.attempts, [])
    if relayed.chunks is not None:
        return StreamRelay(relayed.chunks, relayed.status, relayed.content_type,
                           _stream_headers(headers))  # fmt: skip
    return Response(relayed.body, relayed.status, headers=headers,
                    media_type=relayed.content_type)  # fmt: skip
