"""Tool calls that llama.cpp's grammar guarantees, for any model.

A chat template with no tool syntax (the built-in ones, the transcript that base models get)
gives a model no way to call a tool, and llama.cpp then answers in plain text whatever
``tool_choice`` says: a forced choice silently ignored. So the node serves tools in a generic
format of its own (as llama.cpp's "generic" tool format does): the tools are described in a
system message, the model answers with one JSON object, ``{"tool_call": {"name", "arguments"}}``
or ``{"response": "..."}``, and a JSON schema built from the tools constrains generation to
exactly that (llama.cpp turns ``json_schema`` into a grammar). A forced choice (``required``,
or a named function) leaves only the call in the schema, so it is honoured with every model,
whatever its template. The answer is rewritten into OpenAI's ``tool_calls`` (``rewrite``).

Earlier turns in that format: an assistant's calls become the JSON it would have written, a
tool's result a user turn ``{"tool_response": ...}``. A template with tool syntax of its own
(from the GGUF) serves ``auto`` natively, through llama.cpp.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from llmlb.common.errors import BadRequest
from llmlb.node.templates import ChatTemplate

_REQUEST_FIELDS = ("tools", "tool_choice", "parallel_tool_calls")
_PENALTIES = ("repeat_penalty", "frequency_penalty", "presence_penalty")
CALL_REPEAT_PENALTY = 1.1


@dataclass(frozen=True)
class ToolPlan:
    """Tools served in the generic format: what to rewrite the answer into."""

    tools: tuple[str, ...]
    structured: bool = False  # a plain answer is JSON (response_format): given as its text


def plan_tools(
    body: dict[str, Any], template: ChatTemplate
) -> tuple[dict[str, Any], ToolPlan | None]:
    """The request as the engine gets it, and the plan for its answer (None: as it comes)."""
    tools = [t["function"] for t in body.get("tools") or []]
    choice = body.get("tool_choice")
    tools, choice = _allowed(choice, tools)
    named = _named(choice, tools)
    forced = choice == "required" or named is not None
    if not tools and forced:
        raise BadRequest("'tool_choice' requires 'tools'", param="tool_choice")
    if choice not in (None, "auto", "none", "required") and named is None:
        raise BadRequest("'tool_choice' must be 'none', 'auto', 'required' or "
                         "{'type': 'function', 'function': {'name': ...}}",
                         param="tool_choice")  # fmt: skip
    if template.has_tools and not forced:
        return body, None  # the model's own tool syntax, through llama.cpp
    messages = _generic_messages(body["messages"])
    if not tools or choice == "none":
        return {**_without_tools(body), "messages": messages}, None
    if body.get("grammar") is not None or body.get("json_schema") is not None:
        field = "grammar" if body.get("grammar") is not None else "json_schema"
        raise BadRequest(f"'{field}' cannot be combined with tools on this model (its calls "
                         "are constrained by a grammar of their own)", param=field)  # fmt: skip
    offered = [t for t in tools if named is None or t["name"] == named]
    answer = None if forced else _answer_schema(body.get("response_format"))
    instructions = _instructions(offered, forced)
    engine_body = {k: v for k, v in _without_tools(body).items() if k != "response_format"}
    return {
        **engine_body,
        "messages": [{"role": "system", "content": instructions}, *messages],
        "json_schema": _schema(offered, answer),
    }, ToolPlan(
        tuple(t["name"] for t in offered),
        structured=answer is not None and answer != {"type": "string"},
    )


def with_closing_penalty(body: dict[str, Any]) -> dict[str, Any]:
    """A request whose output a grammar constrains (a call, a JSON schema), with a mild
    penalty on repeats where the client set none: a small model decoding greedily can repeat
    one token inside a string (a forecast of "10000000...") until the output limit, leaving
    the JSON unfinished; the penalty lets it close the string."""
    constrained = any(body.get(f) is not None for f in ("json_schema", "grammar")) or (
        isinstance(body.get("response_format"), dict)
        and body["response_format"].get("type") in ("json_object", "json_schema"))  # fmt: skip
    if not constrained or any(body.get(p) is not None for p in _PENALTIES):
        return body
    return {**body, "repeat_penalty": CALL_REPEAT_PENALTY}


def _allowed(choice: Any, tools: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], Any]:
    """``allowed_tools`` (the tools of the request a turn may use, ``auto`` or ``required``)
    as the tools it leaves and the plain choice it stands for."""
    if not isinstance(choice, dict) or choice.get("type") != "allowed_tools":
        return tools, choice
    allowed = choice.get("allowed_tools")
    listed = allowed.get("tools") if isinstance(allowed, dict) else None
    mode = allowed.get("mode") if isinstance(allowed, dict) else None
    if not isinstance(listed, list) or mode not in ("auto", "required"):
        raise BadRequest("'tool_choice.allowed_tools' needs 'mode' (auto or required) and "
                         "'tools'", param="tool_choice")  # fmt: skip
    names = {str((t.get("function") or {}).get("name")) for t in listed if isinstance(t, dict)}
    return [t for t in tools if t["name"] in names], mode


def _named(choice: Any, tools: list[dict[str, Any]]) -> str | None:
    if not isinstance(choice, dict):
        return None
    function = choice.get("function")
    name = function.get("name") if isinstance(function, dict) else None
    if choice.get("type") == "custom":
        raise BadRequest("custom (free-form) tools are not served: only function tools",
                         param="tool_choice")  # fmt: skip
    if choice.get("type") != "function":
        raise BadRequest(f"'tool_choice' of type {str(choice.get('type'))[:40]!r} is not "
                         "served: use none, auto, required, a function or allowed_tools",
                         param="tool_choice")  # fmt: skip
    if choice.get("type") != "function" or not isinstance(name, str):
        raise BadRequest("a named 'tool_choice' is {'type': 'function', 'function': "
                         "{'name': ...}}", param="tool_choice")  # fmt: skip
    if tools and name not in [t["name"] for t in tools]:
        raise BadRequest(f"'tool_choice' names {name!r}, which is not in 'tools'",
                         param="tool_choice")  # fmt: skip
    return name


def _without_tools(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in _REQUEST_FIELDS}


def _answer_schema(response_format: Any) -> dict[str, Any]:
    """What a plain answer is, beside a call: text, or the JSON ``response_format`` asks."""
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        return schema if isinstance(schema, dict) else {"type": "object"}
    return {"type": "string"}


def _schema(tools: list[dict[str, Any]], answer: dict[str, Any] | None) -> dict[str, Any]:
    """A call of one of ``tools``; or, where ``answer`` is given (the choice is not forced),
    that instead."""
    calls = [
        {"type": "object", "additionalProperties": False, "required": ["name", "arguments"],
         "properties": {"name": {"const": t["name"]},
                        "arguments": t.get("parameters") or {"type": "object"}}}
        for t in tools
    ]  # fmt: skip
    one = calls[0] if len(calls) == 1 else {"anyOf": calls}
    call = {"type": "object", "additionalProperties": False, "required": ["tool_call"],
            "properties": {"tool_call": one}}  # fmt: skip
    if answer is None:
        return call
    response = {"type": "object", "additionalProperties": False, "required": ["response"],
                "properties": {"response": answer}}  # fmt: skip
    return {"anyOf": [call, response]}


def _instructions(tools: list[dict[str, Any]], forced: bool) -> str:
    described = "\n".join(
        f"- {t['name']}: {t.get('description') or 'no description'}. Arguments (JSON Schema): "
        f"{orjson.dumps(t.get('parameters') or {'type': 'object'}).decode()}"
        for t in tools
    )
    call = '{"tool_call": {"name": ..., "arguments": {...}}}'
    if forced:
        how = f"Reply with a JSON object that calls one of them: {call}"
    else:
        how = (f"Reply with one JSON object: {call} to call a tool, or "
               '{"response": ...} with your reply, to answer without one.')  # fmt: skip
    return f"You can call these tools:\n{described}\n{how}"


def _generic_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Earlier turns as the generic format writes them; tool results as user turns (a
    template without tool syntax renders no other role)."""
    names: dict[str, str] = {}
    converted = []
    for message in messages:
        role = message.get("role")
        if role == "assistant" and message.get("tool_calls"):
            calls = []
            for call in message["tool_calls"]:
                function = call.get("function") or {}
                names[str(call.get("id"))] = str(function.get("name"))
                arguments = _json_or_text(function.get("arguments"))
                calls.append({"tool_call": {"name": function.get("name"), "arguments": arguments}})
            content = "\n".join(orjson.dumps(c).decode() for c in calls)
            converted.append({"role": "assistant", "content": content})
        elif role == "tool":
            name = names.get(str(message.get("tool_call_id")), message.get("name"))
            result = {"tool_response": {"name": name, "content": message.get("content")}}
            converted.append({"role": "user", "content": orjson.dumps(result).decode()})
        elif role == "developer":  # the newer name of system, which every template knows
            converted.append({**message, "role": "system"})
        else:
            converted.append({k: v for k, v in message.items() if k != "tool_calls"})
    return converted


def _json_or_text(arguments: Any) -> Any:
    if isinstance(arguments, str):
        try:
            return orjson.loads(arguments)
        except orjson.JSONDecodeError:
            return arguments
    return arguments


async def rewrite(plan: ToolPlan, chunks: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
    """llama.cpp's chat chunks, with the generic format's JSON turned into OpenAI's answer:
    ``tool_calls`` (finish reason ``tool_calls``) or plain content. The JSON is held back
    until its choice finishes (a call is whole only then); everything else passes as it is."""
    held: dict[int, list[str]] = {}
    async for raw in chunks:
        chunk = orjson.loads(raw)
        if not isinstance(chunk, dict) or not chunk.get("choices"):
            yield raw  # the usage chunk, an error: as they are
            continue
        for choice in chunk["choices"]:
            index = int(choice.get("index") or 0)
            delta = choice.get("delta") or {}
            if delta.get("content"):
                held.setdefault(index, []).append(delta["content"])
                delta = {k: v for k, v in delta.items() if k != "content"}
            if not choice.get("finish_reason"):
                if delta:
                    yield _chunk_like(chunk, index, delta, None)
                continue
            answer, finish = _answer("".join(held.pop(index, [])), plan, choice["finish_reason"])
            yield _chunk_like(chunk, index, answer, None)
            yield _chunk_like(chunk, index, {}, finish)


def _answer(text: str, plan: ToolPlan, finish: str) -> tuple[dict[str, Any], str]:
    """(the delta, the finish reason) for the model's whole JSON reply."""
    try:
        reply = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {"content": text}, finish  # cut short (finish "length"): as it came
    call = reply.get("tool_call") if isinstance(reply, dict) else None
    if isinstance(call, dict) and call.get("name") in plan.tools:
        arguments = orjson.dumps(call.get("arguments") or {}).decode()
        tool_call = {"index": 0, "id": f"call_{secrets.token_hex(12)}", "type": "function",
                     "function": {"name": call["name"], "arguments": arguments}}  # fmt: skip
        return {"content": None, "tool_calls": [tool_call]}, "tool_calls"
    if isinstance(reply, dict) and "response" in reply:
        response = reply["response"]
        if plan.structured:  # the JSON the client's response_format asked for, as text
            return {"content": orjson.dumps(response).decode()}, finish
        if isinstance(response, str):
            return {"content": response}, finish
    return {"content": text}, finish


def _chunk_like(
    chunk: dict[str, Any], index: int, delta: dict[str, Any], finish: str | None
) -> bytes:
    choice = {"index": index, "delta": delta, "finish_reason": finish}
    return orjson.dumps({**chunk, "choices": [choice]})
