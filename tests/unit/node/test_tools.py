"""Tool calls in the generic format (node.tools): a forced choice leaves the model nothing but
a call, ``none`` leaves it none, and the model's JSON comes back as OpenAI's ``tool_calls``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from llmlb.common.errors import BadRequest
from llmlb.node.templates import BUILTIN, ChatTemplate
from llmlb.node.tools import plan_tools, rewrite

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}  # fmt: skip
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
QA = BUILTIN["qa"]
NATIVE = ChatTemplate("gguf", None, has_tools=True)


def request(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "Weather in Paris?"}],
            "tools": [WEATHER, TIME], **fields}  # fmt: skip


def call_names(schema: dict[str, Any]) -> set[str]:
    call = schema["properties"]["tool_call"]
    return {c["properties"]["name"]["const"] for c in call.get("anyOf", [call])}


@pytest.mark.parametrize("template", [QA, NATIVE])
def test_required_leaves_only_a_call_of_any_tool(template: ChatTemplate) -> None:
    body, plan = plan_tools(request(tool_choice="required"), template)
    assert plan is not None and set(plan.tools) == {"get_weather", "get_time"}
    assert "anyOf" not in body["json_schema"]  # no plain answer: a call, or nothing
    assert call_names(body["json_schema"]) == {"get_weather", "get_time"}
    assert not {"tools", "tool_choice"} & set(body)  # llama.cpp never sees them
    assert "get_weather" in body["messages"][0]["content"]  # described to the model


def test_a_named_function_leaves_only_that_one() -> None:
    choice = {"type": "function", "function": {"name": "get_time"}}
    body, plan = plan_tools(request(tool_choice=choice), QA)
    assert plan is not None and plan.tools == ("get_time",)
    assert call_names(body["json_schema"]) == {"get_time"}


def test_auto_on_a_template_without_tools_allows_a_call_or_an_answer() -> None:
    body, plan = plan_tools(request(), QA)
    assert plan is not None
    assert len(body["json_schema"]["anyOf"]) == 2


def test_auto_on_a_template_with_tools_goes_to_llama_cpp_as_it_is() -> None:
    body = request(tool_choice="auto")
    assert plan_tools(body, NATIVE) == (body, None)


def test_none_sends_no_tools_and_keeps_the_history_readable() -> None:
    history = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]  # fmt: skip
    body, plan = plan_tools(request(tool_choice="none", messages=history), QA)
    assert plan is None and "tools" not in body and "json_schema" not in body
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert orjson.loads(body["messages"][1]["content"]) == {
        "tool_call": {"name": "get_weather", "arguments": {"city": "Paris"}}
    }
    assert orjson.loads(body["messages"][2]["content"]) == {
        "tool_response": {"name": "get_weather", "content": "sunny"}
    }


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tool_choice": "required", "tools": None}, "tool_choice"),
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"tool_choice": "required", "grammar": "root ::= \"x\""}, "grammar"),
        ({"tool_choice": {"type": "custom", "custom": {"name": "x"}}}, "tool_choice"),
    ],
)  # fmt: skip
def test_a_choice_that_cannot_be_honoured_is_a_400(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequest) as refused:
        plan_tools(request(**fields), QA)
    assert refused.value.param == param


def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return orjson.dumps({"id": "x", "object": "chat.completion.chunk", "model": "m",
                         "choices": [choice]})  # fmt: skip


async def stream(*chunks: bytes) -> AsyncIterator[bytes]:
    for piece in chunks:
        yield piece


async def rewritten(text: list[str], finish: str = "stop") -> list[dict[str, Any]]:
    _, plan = plan_tools(request(tool_choice="required"), QA)
    assert plan is not None
    pieces = [chunk({"role": "assistant", "content": None})]
    pieces += [chunk({"content": part}) for part in text] + [chunk({}, finish)]
    return [orjson.loads(c) async for c in rewrite(plan, stream(*pieces))]


async def test_the_models_call_comes_back_as_openais_tool_calls() -> None:
    out = await rewritten(['{"tool_call": {"name": "get_wea', 'ther", "arguments": {"city": "Par',
                           'is"}}}'])  # fmt: skip
    deltas = [c["choices"][0]["delta"] for c in out]
    assert deltas[0]["role"] == "assistant"
    call = deltas[1]["tool_calls"][0]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city":"Paris"}'}
    assert call["id"].startswith("call_") and call["type"] == "function"
    assert out[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_an_answer_instead_of_a_call_is_plain_content() -> None:
    out = await rewritten(['{"response": "It is sunny."}'])
    assert out[1]["choices"][0]["delta"] == {"content": "It is sunny."}
    assert out[-1]["choices"][0]["finish_reason"] == "stop"


def test_allowed_tools_narrow_the_tools_and_set_the_mode() -> None:
    choice = {"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [
        {"type": "function", "function": {"name": "get_time"}}]}}  # fmt: skip
    body, plan = plan_tools(request(tool_choice=choice), QA)
    assert plan is not None and plan.tools == ("get_time",)
    assert "anyOf" not in body["json_schema"]


async def test_an_answer_beside_tools_follows_the_response_format() -> None:
    fmt: dict[str, Any] = {"type": "json_schema", "json_schema": {"name": "w", "schema": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}  # fmt: skip
    body, plan = plan_tools(request(response_format=fmt), QA)
    assert plan is not None and "response_format" not in body
    answer = body["json_schema"]["anyOf"][1]["properties"]["response"]
    assert answer == fmt["json_schema"]["schema"]
    pieces = [chunk({"content": '{"response": {"city": "Paris"}}'}), chunk({}, "stop")]
    out = [orjson.loads(c) async for c in rewrite(plan, stream(*pieces))]
    assert orjson.loads(out[0]["choices"][0]["delta"]["content"]) == {"city": "Paris"}


async def test_json_cut_short_by_the_length_limit_is_given_as_it_came() -> None:
    out = await rewritten(['{"tool_call": {"na'], finish="length")
    assert out[1]["choices"][0]["delta"] == {"content": '{"tool_call": {"na'}
    assert out[-1]["choices"][0]["finish_reason"] == "length"
