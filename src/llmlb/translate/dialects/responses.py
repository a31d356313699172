"""OpenAI's Responses API (``POST /v1/responses``) on top of chat completions.

Stateless: ``previous_response_id`` is refused (the router keeps no conversations), and
``store`` is read as false.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Annotated, Any

import orjson
from pydantic import Field

from llmlb.common.chat import MAX_TOOLS, OpenModel, parse_as
from llmlb.common.errors import BadRequest, LlmlbError
from llmlb.translate import chat
from llmlb.translate.sse import encode

# Chat's names for this dialect's fields (errors from the chat side are renamed).
CHAT_FIELDS = {
    "messages": "input",
    "max_tokens": "max_output_tokens",
    "max_completion_tokens": "max_output_tokens",
    "response_format": "text.format",
}


class ResponsesRequest(OpenModel):
    """The types of a Responses request's fields; items are checked as they are read."""

    model: str
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    tools: Annotated[list[dict[str, Any]], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: str | dict[str, Any] | None = None
    max_output_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: float | None = None
    top_p: float | None = None
    stream: bool | None = None
    text: dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    previous_response_id: str | None = None
    metadata: dict[str, Any] | None = None
    user: str | None = None


_PASSED = ("temperature", "top_p", "parallel_tool_calls", "user", "metadata")
_UNDERSTOOD = frozenset({"model", "input", "instructions", "tools", "tool_choice", "stream",
                         "max_output_tokens", "text", "store", *_PASSED})  # fmt: skip


def _content_parts(content: Any) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadRequest("a message's 'content' must be a string or a list", param="input")
    parts: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": str(part.get("text", ""))})
        elif kind == "refusal":  # an earlier answer of the assistant's that refused: its words
            parts.append({"type": "text", "text": str(part.get("refusal", ""))})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            parts.append({"type": "image_url", "image_url": {"url": part["image_url"]}})
        else:
            raise BadRequest(f"input content of type {kind!r} is not supported here "
                             "(input_text, input_image with image_url)", param="input")  # fmt: skip
    return parts


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if instructions := body.get("instructions"):
        messages.append({"role": "system", "content": str(instructions)})
    items = body.get("input")
    if isinstance(items, str):
        return [*messages, {"role": "user", "content": items}]
    if not isinstance(items, list) or not items:
        raise BadRequest("'input' must be a string or a non-empty list of items", param="input")
    for item in items:
        if not isinstance(item, dict):
            raise BadRequest("each input item must be an object", param="input")
        kind = item.get("type") or ("item_reference" if "role" not in item else "message")
        if kind == "item_reference":
            raise BadRequest("input items that refer to stored ones (item_reference) need "
                             "stored responses: this router stores none; send the items "
                             "themselves", param="input")  # fmt: skip
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise BadRequest(f"unknown message role {role!r}", param="input")
            messages.append({"role": role, "content": _content_parts(item.get("content"))})
        elif kind == "function_call":
            call = chat.tool_call(str(item.get("call_id")), str(item.get("name")),
                                  str(item.get("arguments") or "{}"))  # fmt: skip
            last = messages[-1] if messages else None
            if last and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)  # parallel calls: one assistant turn
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            text = output if isinstance(output, str) else orjson.dumps(output).decode()
            messages.append({"role": "tool", "tool_call_id": str(item.get("call_id")),
                             "content": text})  # fmt: skip
        elif kind != "reasoning":
            raise BadRequest(f"input items of type {kind!r} are not supported here",
                             param="input")  # fmt: skip
    if not messages:  # reasoning items alone, and no instructions
        raise BadRequest("'input' holds no message, call or call output to answer (reasoning "
                         "items carry none)", param="input")  # fmt: skip
    return messages


def _tools(body: dict[str, Any]) -> list[dict[str, Any]]:
    tools = []
    for tool in body.get("tools") or []:
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise BadRequest(f"tools of type {kind!r} are not supported here (only 'function')",
                             param="tools")  # fmt: skip
        function = {k: tool[k] for k in ("name", "description", "parameters", "strict")
                    if k in tool}  # fmt: skip
        tools.append({"type": "function", "function": function})
    return tools


def _tool_choice(choice: Any) -> Any:
    """Chat's ``tool_choice`` for a Responses one (function tools are named at the top)."""
    if not isinstance(choice, dict):
        return choice
    kind = choice.get("type")
    if kind == "function":
        return {"type": "function", "function": {"name": choice.get("name")}}
    if kind == "allowed_tools":
        tools = [{"type": "function", "function": {"name": t.get("name")}}
                 for t in choice.get("tools") or [] if isinstance(t, dict)]  # fmt: skip
        return {"type": "allowed_tools",
                "allowed_tools": {"mode": choice.get("mode"), "tools": tools}}  # fmt: skip
    return choice


def _response_format(text: Any) -> dict[str, Any] | None:
    fmt = text.get("format") if isinstance(text, dict) else None
    if not isinstance(fmt, dict) or fmt.get("type") in (None, "text"):
        return None
    if fmt["type"] == "json_object":
        return {"type": "json_object"}
    if fmt["type"] == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        return {"type": "json_schema", "json_schema": schema}
    raise BadRequest(f"text.format of type {fmt['type']!r} is not supported", param="text")


def to_chat(body: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(the chat request, the fields it drops) for a Responses request."""
    parse_as(ResponsesRequest, body)
    if body.get("previous_response_id"):
        raise BadRequest("previous_response_id is not supported: this router stores no "
                         "responses; send the whole conversation in 'input'",
                         param="previous_response_id")  # fmt: skip
    request: dict[str, Any] = {"model": body.get("model"), "messages": _messages(body)}
    for name in _PASSED:
        if body.get(name) is not None:
            request[name] = body[name]
    if body.get("max_output_tokens") is not None:
        request["max_tokens"] = body["max_output_tokens"]
    if tools := _tools(body):
        request["tools"] = tools
    if body.get("tool_choice") is not None:
        request["tool_choice"] = _tool_choice(body["tool_choice"])
    if (fmt := _response_format(body.get("text"))) is not None:
        request["response_format"] = fmt
    if body.get("stream") is True:
        request["stream"] = True
    return request, sorted(k for k in body if k not in _UNDERSTOOD)


def _usage(tokens: dict[str, Any] | None) -> dict[str, Any]:
    tokens = tokens or {}
    prompt = int(tokens.get("prompt_tokens") or 0)
    output = int(tokens.get("completion_tokens") or 0)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": output, "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + output,
    }  # fmt: skip


def _response(body: dict[str, Any], id_: str, created: float, model: str, status: str,
              output: list[dict[str, Any]], usage: dict[str, Any] | None,
              finish: str | None = None) -> dict[str, Any]:  # fmt: skip
    incomplete = {"reason": "max_output_tokens"} if finish == "length" else None
    parallel = body.get("parallel_tool_calls")
    response = {
        "id": id_, "object": "response", "created_at": created, "status": status,
        "error": None, "incomplete_details": incomplete, "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"), "model": model, "output": output,
        # A boolean in the schema: a request's explicit null is the default, true.
        "parallel_tool_calls": parallel if isinstance(parallel, bool) else True,
        "previous_response_id": None, "reasoning": {"effort": None, "summary": None},
        "store": False, "temperature": body.get("temperature"),
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice") or "auto", "tools": body.get("tools") or [],
        "top_p": body.get("top_p"), "truncation": "disabled", "usage": usage,
        "metadata": body.get("metadata") or {},
    }  # fmt: skip
    if isinstance(body.get("user"), str):  # a string where given; absent, not null
        response["user"] = body["user"]
    return response


def _message_item(id_: str, text: str, status: str) -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
    return {"type": "message", "id": id_, "status": status, "role": "assistant",
            "content": content if status == "completed" else []}  # fmt: skip


def _call_item(id_: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {"type": "function_call", "id": id_, "call_id": call_id, "name": name,
            "arguments": arguments, "status": status}  # fmt: skip


def from_chat(answer: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """A Responses object for a whole chat answer."""
    choice = (answer.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    output = []
    if text := message.get("content"):
        output.append(_message_item(chat.new_id("msg_"), str(text), "completed"))
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        output.append(_call_item(chat.new_id("fc_"), str(call.get("id")),
                                 str(function.get("name")), str(function.get("arguments") or ""),
                                 "completed"))  # fmt: skip
    finish = choice.get("finish_reason")
    return _response(body, chat.new_id("resp_"), float(answer.get("created") or time.time()),
                     str(answer.get("model") or body.get("model")),
                     "incomplete" if finish == "length" else "completed", output,
                     _usage(answer.get("usage")), finish)  # fmt: skip


@dataclass
class _Item:
    output_index: int
    id: str
    text: list[str] = field(default_factory=list)
    call_id: str = ""
    name: str = ""


class _Events:
    """The numbered events of one streamed response."""

    def __init__(self) -> None:
        self.sequence = 0

    def __call__(self, kind: str, **fields: Any) -> bytes:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return encode(event, kind)


def stream(
    chunks: AsyncGenerator[dict[str, Any], None], body: dict[str, Any]
) -> AsyncGenerator[bytes, None]:
    """Responses events for a stream of chat chunks; an error ends it with an error event."""
    return chat.started_before(chunks, _events, body)


async def _events(
    chunks: AsyncGenerator[dict[str, Any], None], body: dict[str, Any]
) -> AsyncGenerator[bytes, None]:
    emit = _Events()
    response_id, created = chat.new_id("resp_"), float(int(time.time()))
    model = str(body.get("model"))
    started = _response(body, response_id, created, model, "in_progress", [], None)
    yield emit("response.created", response=started)
    yield emit("response.in_progress", response=started)
    message: _Item | None = None
    calls: dict[int, _Item] = {}  # chat tool call index -> item
    output: list[dict[str, Any]] = []
    finish, tokens = None, None

    def close_message() -> list[bytes]:
        nonlocal message
        if message is None:
            return []
        text = "".join(message.text)
        item = _message_item(message.id, text, "completed")
        part = item["content"][0]
        where = {"item_id": message.id, "output_index": message.output_index}
        events = [emit("response.output_text.done", **where, content_index=0, text=text,
                       logprobs=[]),
                  emit("response.content_part.done", **where, content_index=0, part=part),
                  emit("response.output_item.done", output_index=message.output_index,
                       item=item)]  # fmt: skip
        output.append(item)
        message = None
        return events

    try:
        async with contextlib.aclosing(chunks):
            async for piece in chunks:
                model = str(piece.get("model") or model)
                if piece.get("usage"):
                    tokens = piece["usage"]
                for choice in piece.get("choices") or []:
                    delta = choice.get("delta") or {}
                    if text := delta.get("content"):
                        if message is None:
                            message = _Item(len(output) + len(calls), chat.new_id("msg_"))
                            where = {"output_index": message.output_index}
                            yield emit(
                                "response.output_item.added",
                                **where,
                                item=_message_item(message.id, "", "in_progress"),
                            )
                            yield emit("response.content_part.added", **where,
                                       item_id=message.id, content_index=0,
                                       part={"type": "output_text", "text": "",
                                             "annotations": [], "logprobs": []})  # fmt: skip
                        message.text.append(text)
                        yield emit("response.output_text.delta", item_id=message.id,
                                   output_index=message.output_index, content_index=0,
                                   delta=text, logprobs=[])  # fmt: skip
                    for call in delta.get("tool_calls") or []:
                        for event in close_message():
                            yield event
                        index = int(call.get("index") or 0)
                        function = call.get("function") or {}
                        item = calls.get(index)
                        if item is None:
                            item = calls[index] = _Item(
                                len(output) + len(calls), chat.new_id("fc_"),
                                call_id=str(call.get("id") or chat.new_id("call_")),
                                name=str(function.get("name") or ""),
                            )  # fmt: skip
                            yield emit("response.output_item.added",
                                       output_index=item.output_index,
                                       item=_call_item(item.id, item.call_id, item.name, "",
                                                       "in_progress"))  # fmt: skip
                        if arguments := function.get("arguments"):
                            item.text.append(arguments)
                            yield emit("response.function_call_arguments.delta",
                                       item_id=item.id, output_index=item.output_index,
                                       delta=arguments)  # fmt: skip
                    finish = choice.get("finish_reason") or finish
    except LlmlbError as exc:
        yield emit("error", code=exc.code, message=exc.message, param=None)
        failed = _response(body, response_id, created, model, "failed", output, None)
        failed["error"] = {"code": "server_error", "message": exc.message}
        yield emit("response.failed", response=failed)
        return
    for event in close_message():
        yield event
    for item in sorted(calls.values(), key=lambda i: i.output_index):
        arguments = "".join(item.text)
        done = _call_item(item.id, item.call_id, item.name, arguments, "completed")
        yield emit(
            "response.function_call_arguments.done",
            item_id=item.id,
            output_index=item.output_index,
            name=item.name,
            arguments=arguments,
        )
        yield emit("response.output_item.done", output_index=item.output_index, item=done)
        output.append(done)
    status = "incomplete" if finish == "length" else "completed"
    final = _response(body, response_id, created, model, status, output, _usage(tokens), finish)
    yield emit("response.incomplete" if status == "incomplete" else "response.completed",
               response=final)  # fmt: skip
