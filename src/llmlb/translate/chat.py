"""OpenAI's chat format, the hub of every translation: builders and readers.

A chat answer is a ``chat.completion`` dict; a streamed one is a sequence of
``chat.completion.chunk`` dicts. Usage is ``{"prompt_tokens", "completion_tokens",
"total_tokens"}``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import re
import secrets
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import orjson
from pydantic import Field

from llmlb.common.chat import (
    MAX_MESSAGES,
    MAX_TOOLS,
    ImagePart,
    OpenModel,
    StreamOptions,
    TextPart,
    Tool,
    ToolCall,
    parse_as,
    whole_numbers,
)
from llmlb.common.errors import BadRequest, LlmlbError, PayloadTooLarge

# Fields of a chat request every provider understands in one way or another.
COMMON_FIELDS = frozenset({
    "model", "messages", "stream", "stream_options", "temperature", "top_p", "max_tokens",
    "max_completion_tokens", "stop", "tools", "tool_choice", "n", "user", "metadata",
    "parallel_tool_calls", "store",
})  # fmt: skip
MAX_STOP_SEQUENCES = 16


class Message(OpenModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart | ImagePart] | None = None
    tool_calls: Annotated[list[ToolCall], Field(max_length=MAX_TOOLS)] | None = None
    tool_call_id: str | None = None


class ChatRequest(OpenModel):
    """What a chat request must be before it is translated for a provider."""

    model: str
    messages: Annotated[list[Message], Field(min_length=1, max_length=MAX_MESSAGES)]
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    n: Annotated[int, Field(ge=1)] | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP_SEQUENCES)] | None = None
    tools: Annotated[list[Tool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None


def check_request(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` as a provider gets it (whole-number floats in integer fields as integers);
    BadRequest naming the first field that is not a chat request's."""
    body = whole_numbers(body)
    parse_as(ChatRequest, body)
    return body


_DATA_URL = re.compile(r"data:([\w.+-]+/[\w.+-]+);base64,(.*)", re.DOTALL)


def new_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(12)}"


def usage(prompt: int | None, completion: int | None) -> dict[str, int]:
    p, c = int(prompt or 0), int(completion or 0)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def completion(
    id_: str, model: str, message: dict[str, Any], finish_reason: str | None,
    tokens: dict[str, int] | None,
) -> dict[str, Any]:  # fmt: skip
    return {
        "id": id_, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"refusal": None, **message}, "logprobs": None,
                     "finish_reason": finish_reason}],
        "usage": tokens,
    }  # fmt: skip


def chunk(
    id_: str, model: str, delta: dict[str, Any], finish_reason: str | None = None,
    created: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    return {
        "id": id_, "object": "chat.completion.chunk", "created": created or int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None,
                     "finish_reason": finish_reason}],
    }  # fmt: skip


def usage_chunk(id_: str, model: str, tokens: dict[str, int]) -> dict[str, Any]:
    """The last chunk of a stream asked with ``stream_options.include_usage``."""
    return {
        "id": id_, "object": "chat.completion.chunk", "created": int(time.time()),
        "model": model, "choices": [], "usage": tokens,
    }  # fmt: skip


def tool_call(id_: str, name: str, arguments: str, index: int | None = None) -> dict[str, Any]:
    call: dict[str, Any] = {"id": id_, "type": "function",
                            "function": {"name": name, "arguments": arguments}}  # fmt: skip
    if index is not None:
        call["index"] = index
    return call


def text_of(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of a list."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(p.get("text", "")) for p in content if isinstance(p, dict) and "text" in p
        )
    raise BadRequest("a message's 'content' must be a string or a list of parts", param="messages")


def parts_of(content: Any) -> list[dict[str, Any]]:
    """A message's content as a list of parts (``text`` and ``image_url``)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list) or not all(isinstance(p, dict) for p in content):
        raise BadRequest("a message's 'content' must be a string or a list of parts",
                         param="messages")  # fmt: skip
    for part in content:
        if part.get("type") not in ("text", "image_url"):
            raise BadRequest(f"content parts of type {part.get('type')!r} are not supported "
                             "here (use 'text' or 'image_url')", param="messages")  # fmt: skip
    return content


def image_url_of(part: dict[str, Any]) -> str:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise BadRequest("an 'image_url' part needs a 'url'", param="messages")
    return url


@dataclass(frozen=True)
class InlineImage:
    media_type: str
    data: str  # base64


def inline_image(url: str, limit: int) -> InlineImage | None:
    """The image of a data URL (checked and bounded); None for an http(s) URL."""
    if url.startswith(("http://", "https://")):
        return None
    match = _DATA_URL.fullmatch(url)
    if match is None:
        raise BadRequest("an image must be an http(s) URL or a base64 data URL "
                         "(data:image/png;base64,...)", param="messages")  # fmt: skip
    data = match.group(2)
    if len(data) * 3 // 4 > limit:
        raise PayloadTooLarge(f"an image is larger than {limit} bytes", param="messages")
    try:
        base64.b64decode(data, validate=True)
    except binascii.Error:
        raise BadRequest("an image's data URL is not valid base64", param="messages") from None
    return InlineImage(match.group(1), data)


def arguments_object(arguments: Any) -> dict[str, Any]:
    """A tool call's ``arguments`` (a JSON string) as an object, for providers that want one."""
    if isinstance(arguments, dict):
        return arguments
    if not arguments:
        return {}
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        raise BadRequest("a tool call's 'arguments' is not valid JSON",
                         param="messages") from None  # fmt: skip
    if not isinstance(value, dict):
        raise BadRequest("a tool call's 'arguments' must be a JSON object", param="messages")
    return value


def max_tokens_of(body: dict[str, Any]) -> int | None:
    value = body.get("max_completion_tokens", body.get("max_tokens"))
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BadRequest("'max_tokens' must be a positive integer", param="max_tokens")
    return value


def stop_list(body: dict[str, Any]) -> list[str] | None:
    stop = body.get("stop")
    if stop is None:
        return None
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return stop
    raise BadRequest("'stop' must be a string or a list of strings", param="stop")


def messages_of(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list", param="messages")
    if not all(isinstance(m, dict) for m in messages):
        raise BadRequest("each message must be an object", param="messages")
    return messages


def function_tools(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``function`` definitions of a request's tools."""
    tools = body.get("tools") or []
    if not isinstance(tools, list):
        raise BadRequest("'tools' must be a list", param="tools")
    functions = []
    for tool in tools:
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise BadRequest("only tools of type 'function' are supported", param="tools")
        function = tool.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise BadRequest("a function tool needs 'function.name'", param="tools")
        functions.append(function)
    return functions


def ignored_fields(body: dict[str, Any], understood: frozenset[str]) -> list[str]:
    """Request fields a provider has no use for: dropped, and named in a response header."""
    return sorted(k for k in body if k not in COMMON_FIELDS and k not in understood)


Chunks = AsyncGenerator[dict[str, Any], None]


async def primed(chunks: Chunks) -> Chunks:
    """``chunks`` started, then given back whole (its first chunk replayed; an error it raised
    at once is raised again when the result is read).

    An async generator that never started ignores ``aclose()``: its ``finally`` (which gives a
    node its slot back, closes a provider's connection, writes the history row) would never
    run if the client left before the first chunk was asked for. A started one runs it.
    """
    try:
        first = await anext(chunks)
    except StopAsyncIteration:
        return _replay([], chunks)
    except LlmlbError as exc:
        return _failing(exc)
    return _replay([first], chunks)


async def started_before(
    chunks: Chunks, events: Callable[[Chunks, dict[str, Any]], AsyncGenerator[bytes, None]],
    body: dict[str, Any],
) -> AsyncGenerator[bytes, None]:  # fmt: skip
    """A dialect's ``events(chunks, body)``, with ``chunks`` started before the first event
    (see ``primed``) and closed when the events end or their reader leaves."""
    async with contextlib.aclosing(chunks):
        pieces = await primed(chunks)
        async with contextlib.aclosing(events(pieces, body)) as out:
            async for event in out:
                yield event


async def _replay(first: list[dict[str, Any]], chunks: Chunks) -> Chunks:
    for piece in first:
        yield piece
    async for piece in chunks:
        yield piece


async def _failing(error: LlmlbError) -> Chunks:
    raise error
    yield {}  # a generator, so that the error comes when it is read
