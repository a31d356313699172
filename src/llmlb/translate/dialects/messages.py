"""Anthropic's Messages API (``POST /v1/messages``) on top of chat completions."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from typing import Annotated, Any

import orjson
from pydantic import Field

from llmlb.common.chat import MAX_TOOLS, OpenModel, parse_as
from llmlb.common.errors import BadRequest, LlmlbError
from llmlb.translate import chat
from llmlb.translate.sse import encode

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                "function_call": "tool_use", "content_filter": "refusal"}  # fmt: skip

# Chat's names for this dialect's fields (errors from the chat side are renamed).
CHAT_FIELDS = {"stop": "stop_sequences", "max_completion_tokens": "max_tokens"}


class MessagesRequest(OpenModel):
    """The types of a Messages request's fields; blocks are checked as they are read."""

    model: str
    max_tokens: Annotated[int, Field(ge=1)]
    messages: Annotated[list[dict[str, Any]], Field(min_length=1)]
    system: str | list[dict[str, Any]] | None = None
    stop_sequences: Annotated[list[str], Field(max_length=16)] | None = None
    temperature: float | None = None
    top_p: float | None = None
    stream: bool | None = None
    tools: Annotated[list[dict[str, Any]], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None


_PASSED = ("temperature", "top_p")
_UNDERSTOOD = frozenset({"model", "messages", "system", "max_tokens", "stop_sequences",
                         "stream", "tools", "tool_choice", "metadata", *_PASSED})  # fmt: skip


def _text_of(blocks: Any, where: str) -> str:
    if isinstance(blocks, str):
        return blocks
    if not isinstance(blocks, list):
        raise BadRequest(f"'{where}' must be a string or a list of blocks", param=where)
    return "\n".join(str(b.get("text", "")) for b in blocks
                     if isinstance(b, dict) and b.get("type") == "text")  # fmt: skip


def _image(block: dict[str, Any]) -> dict[str, Any]:
    source = block.get("source") or {}
    if source.get("type") == "url" and isinstance(source.get("url"), str):
        return {"type": "image_url", "image_url": {"url": source["url"]}}
    if source.get("type") == "base64" and isinstance(source.get("data"), str):
        media = str(source.get("media_type") or "image/png")
        url = f"data:{media};base64,{source['data']}"
        return {"type": "image_url", "image_url": {"url": url}}
    raise BadRequest("an image block needs a base64 or url source", param="messages")


def _turn(role: str, content: Any) -> list[dict[str, Any]]:
    """The chat messages of one Anthropic turn (tool results become tool messages)."""
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise BadRequest("a message's 'content' must be a string or a list of blocks",
                         param="messages")  # fmt: skip
    results: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for block in content:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": str(block.get("text", ""))})
        elif kind == "image":
            parts.append(_image(block))
        elif kind == "tool_use" and role == "assistant":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            calls.append(chat.tool_call(str(block.get("id")), str(block.get("name")), arguments))
        elif kind == "tool_result" and role == "user":
            results.append(
                {
                    "role": "tool",
                    "tool_call_id": str(block.get("tool_use_id")),
                    "content": _text_of(block.get("content") or "", "messages"),
                }
            )
        elif kind not in ("thinking", "redacted_thinking"):
            raise BadRequest(f"content blocks of type {kind!r} are not supported here",
                             param="messages")  # fmt: skip
    messages = list(results)
    if role == "assistant":
        text = "".join(p["text"] for p in parts if p["type"] == "text")
        message: dict[str, Any] = {"role": "assistant", "content": text or None}
        if calls:
            message["tool_calls"] = calls
        if text or calls:
            messages.append(message)
    elif parts:
        only_text = all(p["type"] == "text" for p in parts)
        content_value: Any = "".join(p["text"] for p in parts) if only_text else parts
        messages.append({"role": "user", "content": content_value})
    return messages


def _tool_choice(choice: Any) -> Any:
    if not isinstance(choice, dict):
        raise BadRequest("'tool_choice' must be an object", param="tool_choice")
    kind = choice.get("type")
    if kind == "tool":
        return {"type": "function", "function": {"name": choice.get("name")}}
    mapped = {"auto": "auto", "any": "required", "none": "none"}.get(str(kind))
    if mapped is None:
        raise BadRequest(f"unknown tool_choice type {kind!r}", param="tool_choice")
    return mapped


def count_request(body: dict[str, Any]) -> dict[str, Any]:
    """The chat request whose prompt a ``count_tokens`` request counts (it has no
    ``max_tokens``: the count does not depend on it)."""
    request, _ = to_chat({**body, "max_tokens": 1, "stream": False})
    return request


def to_chat(body: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(the chat request, the fields it drops) for a Messages request."""
    parse_as(MessagesRequest, body)
    max_tokens, turns = body["max_tokens"], body["messages"]
    messages: list[dict[str, Any]] = []
    if body.get("system"):
        messages.append({"role": "system", "content": _text_of(body["system"], "system")})
    for turn in turns:
        role = turn.get("role") if isinstance(turn, dict) else None
        if role not in ("user", "assistant"):
            raise BadRequest(f"unknown message role {role!r}", param="messages")
        messages.extend(_turn(role, turn.get("content")))
    request: dict[str, Any] = {"model": body.get("model"), "messages": messages,
                               "max_tokens": max_tokens}  # fmt: skip
    for name in _PASSED:
        if body.get(name) is not None:
            request[name] = body[name]
    if body.get("stop_sequences"):
        request["stop"] = body["stop_sequences"]
    if tools := body.get("tools"):
        if not isinstance(tools, list):
            raise BadRequest("'tools' must be a list", param="tools")
        request["tools"] = [
            {"type": "function", "function": {
                "name": t.get("name"), "description": t.get("description", ""),
                "parameters": t.get("input_schema") or {"type": "object", "properties": {}},
            }} for t in tools if isinstance(t, dict)
        ]  # fmt: skip
    if body.get("tool_choice") is not None:
        request["tool_choice"] = _tool_choice(body["tool_choice"])
    if body.get("stream") is True:
        request["stream"] = True
    return request, sorted(k for k in body if k not in _UNDERSTOOD)


def _usage(tokens: dict[str, Any] | None) -> dict[str, int]:
    tokens = tokens or {}
    return {"input_tokens": int(tokens.get("prompt_tokens") or 0),
            "output_tokens": int(tokens.get("completion_tokens") or 0)}  # fmt: skip


def _message_id() -> str:
    return chat.new_id("msg_")


def _tool_input(arguments: str) -> dict[str, Any]:
    try:
        value = orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError:
        return {"_raw": arguments}  # the model wrote no JSON: kept, not lost
    return value if isinstance(value, dict) else {"value": value}


def from_chat(answer: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """A Messages answer for a whole chat answer to ``body``."""
    model = str(body.get("model"))
    choice = (answer.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if text := message.get("content"):
        content.append({"type": "text", "text": str(text)})
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        content.append({"type": "tool_use", "id": str(call.get("id")),
                        "name": str(function.get("name")),
                        "input": _tool_input(str(function.get("arguments") or ""))})  # fmt: skip
    return {
        "id": _message_id(), "type": "message", "role": "assistant", "model": model,
        "content": content,
        **_stop(choice.get("finish_reason"), choice.get("stop_reason")),
        "usage": _usage(answer.get("usage")),
    }  # fmt: skip


def _stop(finish: Any, stop_reason: Any) -> dict[str, Any]:
    """Anthropic's ``stop_reason`` and ``stop_sequence`` for a chat finish: the node names
    the client's stop sequence that ended the answer (``stop_reason``, as vLLM does)."""
    if finish == "stop" and isinstance(stop_reason, str):
        return {"stop_reason": "stop_sequence", "stop_sequence": stop_reason}
    return {"stop_reason": STOP_REASONS.get(finish or "stop", "end_turn"), "stop_sequence": None}


def error_event(error: LlmlbError) -> bytes:
    kind = {"server_error": "api_error", "upstream_error": "api_error",
            "timeout_error": "api_error"}.get(error.error_type, error.error_type)  # fmt: skip
    return encode({"type": "error", "error": {"type": kind, "message": error.message}}, "error")


def stream(
    chunks: AsyncGenerator[dict[str, Any], None], body: dict[str, Any]
) -> AsyncGenerator[bytes, None]:
    """Messages events for a stream of chat chunks; an error ends it with an error event."""
    return chat.started_before(chunks, _events, body)


async def _events(
    chunks: AsyncGenerator[dict[str, Any], None], body: dict[str, Any]
) -> AsyncGenerator[bytes, None]:
    model = str(body.get("model"))
    start: dict[str, Any] = {
        "id": _message_id(), "type": "message", "role": "assistant", "model": model,
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 0, "output_tokens": 0},
    }  # fmt: skip
    yield encode({"type": "message_start", "message": start}, "message_start")
    block = -1  # the index of the open content block
    open_kind: str | None = None
    tools: dict[int, int] = {}  # chat tool call index -> block index
    finish, tokens, stop_sequence = None, None, None

    def stop_block() -> bytes:
        nonlocal open_kind
        open_kind = None
        return encode({"type": "content_block_stop", "index": block}, "content_block_stop")

    try:
        async with contextlib.aclosing(chunks):
            async for piece in chunks:
                if piece.get("usage"):
                    tokens = piece["usage"]
                for choice in piece.get("choices") or []:
                    delta = choice.get("delta") or {}
                    if text := delta.get("content"):
                        if open_kind != "text":
                            if open_kind is not None:
                                yield stop_block()
                            block, open_kind = block + 1, "text"
                            yield encode({"type": "content_block_start", "index": block,
                                          "content_block": {"type": "text", "text": ""}},
                                         "content_block_start")  # fmt: skip
                        yield encode({"type": "content_block_delta", "index": block,
                                      "delta": {"type": "text_delta", "text": text}},
                                     "content_block_delta")  # fmt: skip
                    for call in delta.get("tool_calls") or []:
                        index = int(call.get("index") or 0)
                        function = call.get("function") or {}
                        if index not in tools:
                            if open_kind is not None:
                                yield stop_block()
                            block, open_kind = block + 1, "tool_use"
                            tools[index] = block
                            use = {"type": "tool_use", "id": str(call.get("id")),
                                   "name": str(function.get("name")), "input": {}}  # fmt: skip
                            yield encode(
                                {
                                    "type": "content_block_start",
                                    "index": block,
                                    "content_block": use,
                                },
                                "content_block_start",
                            )
                        if arguments := function.get("arguments"):
                            yield encode({"type": "content_block_delta", "index": tools[index],
                                          "delta": {"type": "input_json_delta",
                                                    "partial_json": arguments}},
                                         "content_block_delta")  # fmt: skip
                    finish = choice.get("finish_reason") or finish
                    stop_sequence = choice.get("stop_reason") or stop_sequence
    except LlmlbError as exc:
        yield error_event(exc)
        return
    if open_kind is not None:
        yield stop_block()
    delta = _stop(finish, stop_sequence)
    yield encode({"type": "message_delta", "delta": delta, "usage": _usage(tokens)},
                 "message_delta")  # fmt: skip
    yield encode({"type": "message_stop"}, "message_stop")
