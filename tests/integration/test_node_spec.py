"""The real node against what OpenAI's published API says, with the real small model: forced
tool calls honoured (the model is a base model: a grammar makes its calls), spec-valid
requests served, fields llama.cpp cannot honour refused rather than ignored."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from openai import OpenAI

from tests.support import Process

MODEL = "gemma-3-270m"
WEATHER: Any = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}  # fmt: skip
TIME: Any = {"type": "function", "function": {"name": "get_time", "description": None,
                                              "parameters": {"type": "object"}}}  # fmt: skip
PARIS: Any = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def client(node: Process) -> OpenAI:
    return OpenAI(base_url=node.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def post(node: Process, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(node.url + path, json=body, timeout=120)


@pytest.mark.parametrize(
    "choice",
    ["required", {"type": "function", "function": {"name": "get_weather"}}],
    ids=["required", "named"],
)
def test_a_forced_tool_choice_is_a_call_with_arguments_of_its_schema(
    client: OpenAI, choice: Any
) -> None:
    reply = client.chat.completions.create(
        model=MODEL, messages=PARIS, tools=[WEATHER, TIME], tool_choice=choice, max_tokens=60,
        temperature=0,
    )  # fmt: skip
    chosen = reply.choices[0]
    assert chosen.finish_reason == "tool_calls"
    calls = chosen.message.tool_calls or []
    assert len(calls) == 1 and calls[0].type == "function"
    function = calls[0].function
    if isinstance(choice, dict):
        assert function.name == "get_weather"
    arguments = json.loads(function.arguments)
    if function.name == "get_weather":
        assert isinstance(arguments["city"], str)


def test_a_forced_call_streams_as_tool_call_deltas(client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL, messages=PARIS, tools=[WEATHER], tool_choice="required", max_tokens=60,
        temperature=0, stream=True,
    )  # fmt: skip
    names, arguments, finish = "", "", None
    for chunk in stream:
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                names += call.function.name or "" if call.function else ""
                arguments += call.function.arguments or "" if call.function else ""
            finish = choice.finish_reason or finish
    assert (names, finish) == ("get_weather", "tool_calls")
    assert isinstance(json.loads(arguments)["city"], str)


def test_tool_choice_none_answers_without_a_call_after_a_tool_result(client: OpenAI) -> None:
    history: Any = [
        *PARIS,
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny, 24 degrees"},
    ]  # fmt: skip
    reply = client.chat.completions.create(
        model=MODEL, messages=history, tools=[WEATHER], tool_choice="none", max_tokens=12,
        temperature=0,
    )  # fmt: skip
    assert not reply.choices[0].message.tool_calls
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_a_named_tool_that_is_not_offered_is_a_400(node: Process) -> None:
    answer = post(node, "/v1/chat/completions", {
        "model": MODEL, "messages": PARIS, "tools": [WEATHER],
        "tool_choice": {"type": "function", "function": {"name": "launch"}}})  # fmt: skip
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "tool_choice"


def test_a_whole_answer_has_the_fields_the_schema_requires(node: Process) -> None:
    answer = post(node, "/v1/chat/completions",
                  {"model": MODEL, "messages": PARIS, "max_tokens": 4}).json()  # fmt: skip
    choice = answer["choices"][0]
    assert choice["logprobs"] is None and choice["message"]["refusal"] is None


@pytest.mark.parametrize(
    "fields",
    [
        {"stream": None},
        {"max_tokens": 4.0, "seed": 7.0, "n": 1.0},
        {"top_logprobs": 0},
        {"messages": [*PARIS, {"role": "function", "name": "get_weather", "content": "sunny"}]},
        {"tools": [TIME], "tool_choice": "auto"},  # a description that is null
    ],
    ids=["stream-null", "whole-floats", "top-logprobs-0", "function-role", "null-description"],
)
def test_spec_valid_chat_requests_are_served(node: Process, fields: dict[str, Any]) -> None:
    body = {"model": MODEL, "messages": PARIS, "max_tokens": 4, **fields}
    answer = post(node, "/v1/chat/completions", body)
    assert answer.status_code == 200, answer.text


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
@pytest.mark.parametrize("stream", [False, True])
def test_max_tokens_0_is_an_empty_answer_with_its_prompt_counted(
    node: Process, path: str, stream: bool
) -> None:
    options = {"include_usage": True} if stream else None
    body: dict[str, Any] = {"model": MODEL, "max_tokens": 0, "stream": stream,
                            "stream_options": options}  # fmt: skip
    body.update({"messages": PARIS} if "chat" in path else {"prompt": "The capital of France"})
    answer = post(node, path, {k: v for k, v in body.items() if v is not None})
    assert answer.status_code == 200, answer.text
    if stream:
        events = [json.loads(line[6:]) for line in answer.text.splitlines()
                  if line.startswith("data: {")]  # fmt: skip
        assert events[0]["choices"][0]["finish_reason"] == "length"
        usage = events[-1]["usage"]
    else:
        assert answer.json()["choices"][0]["finish_reason"] == "length"
        usage = answer.json()["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] == 0


def test_a_null_prompt_is_an_empty_one(node: Process) -> None:
    answer = post(node, "/v1/completions", {"model": MODEL, "prompt": None, "max_tokens": 2})
    assert answer.status_code == 200, answer.text


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"echo": True}, "echo"),
        ({"suffix": " and so on."}, "suffix"),
        ({"best_of": 3}, "best_of"),
        ({"prompt": []}, "prompt"),
    ],
)
def test_completion_fields_that_cannot_be_honoured_are_400s_naming_them(
    node: Process, fields: dict[str, Any], param: str
) -> None:
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 2, **fields}
    answer = post(node, "/v1/completions", body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == param
    assert param in answer.json()["error"]["message"]


def test_an_embedding_input_past_512_tokens_is_embedded(node: Process) -> None:
    answer = post(node, "/v1/embeddings", {"model": MODEL, "input": "word " * 900})
    assert answer.status_code == 200, answer.text
    assert answer.json()["usage"]["prompt_tokens"] > 512


def test_an_embedding_input_past_the_context_is_a_400(node: Process) -> None:
    answer = post(node, "/v1/embeddings", {"model": MODEL, "input": "word " * 9000})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == "input"


def test_embedding_dimensions_other_than_the_models_are_refused(node: Process) -> None:
    own = post(node, "/v1/embeddings", {"model": MODEL, "input": "hi"}).json()
    size = len(own["data"][0]["embedding"])
    assert post(node, "/v1/embeddings",
                {"model": MODEL, "input": "hi", "dimensions": size}).status_code == 200  # fmt: skip
    refused = post(node, "/v1/embeddings", {"model": MODEL, "input": "hi", "dimensions": 64})
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "dimensions"


def test_a_stop_sequence_ends_the_answer_and_is_named(node: Process) -> None:
    body = {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 30,
            "temperature": 0, "stop": ["France"]}  # fmt: skip
    first = post(node, "/v1/completions", {**body, "stop": None}).json()["choices"][0]["text"]
    assert "France" in first  # the model does say it, unstopped
    choice = post(node, "/v1/completions", body).json()["choices"][0]
    assert choice["text"] == first[: first.index("France")]
    assert (choice["finish_reason"], choice["stop_reason"]) == ("stop", "France")
