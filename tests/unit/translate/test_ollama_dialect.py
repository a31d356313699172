"""Ollama's requests as chat requests, and chat answers as Ollama's, field by field."""

from __future__ import annotations

import base64
from collections.abc import AsyncGenerator
from typing import Any

import orjson
import pytest

from llmlb.common.errors import BadRequest
from llmlb.translate.dialects import ollama

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 16).decode()
JPEG = base64.b64encode(b"\xff\xd8\xff\xe0" + b"\x00" * 16).decode()


def test_options_format_tools_images_and_think_map_to_chat() -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    request, ignored = ollama.chat_request({
        "model": "m", "tools": tools, "format": {"type": "object"}, "think": False,
        "keep_alive": "5m",
        "options": {"num_predict": 12, "temperature": 0.5, "top_k": 4, "stop": ["\n"],
                    "num_ctx": 8192, "repeat_penalty": 1.1},
        "messages": [
            {"role": "user", "content": "What is this?", "images": [PNG, JPEG]},
            {"role": "assistant", "content": "",
             "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
            {"role": "tool", "tool_name": "get_weather", "content": "sunny"},
        ],
    })  # fmt: skip
    assert request["stream"] is True  # Ollama streams unless told not to
    assert (request["max_tokens"], request["temperature"], request["top_k"]) == (12, 0.5, 4)
    assert request["stop"] == ["\n"] and request["repeat_penalty"] == 1.1
    assert request["response_format"]["json_schema"]["schema"] == {"type": "object"}
    assert request["chat_template_kwargs"] == {"enable_thinking": False}
    assert request["tools"] == tools
    user, assistant, tool = request["messages"]
    assert [p["type"] for p in user["content"]] == ["text", "image_url", "image_url"]
    assert user["content"][1]["image_url"]["url"].startswith("data:image/png;base64,")
    assert user["content"][2]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    call = assistant["tool_calls"][0]
    assert orjson.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert tool["tool_call_id"] == call["id"]
    # A client that echoes the ids newer Ollamas give calls keeps them.
    echoed, _ = ollama.chat_request({"model": "m", "messages": [
        {"role": "assistant", "tool_calls": [{"id": "call_x1", "function": {"name": "f"}}]},
        {"role": "tool", "tool_call_id": "call_x1", "content": "42"}]})  # fmt: skip
    assert echoed["messages"][0]["tool_calls"][0]["id"] == "call_x1"
    assert echoed["messages"][1]["tool_call_id"] == "call_x1"
    # An id made for a call without one never takes one a client gave.
    calls = [{"function": {"name": "f"}}, {"id": "call_1", "function": {"name": "g"}}]
    mixed, _ = ollama.chat_request({"model": "m", "messages": [
        {"role": "assistant", "tool_calls": calls}]})  # fmt: skip
    ids = [call["id"] for call in mixed["messages"][0]["tool_calls"]]
    assert ids[1] == "call_1" and ids[0] != "call_1" and len(set(ids)) == 2
    assert ignored == ["keep_alive"]  # (num_ctx: checked, see below)


def test_generate_is_a_system_and_a_user_turn_and_an_empty_one_loads() -> None:
    request, _ = ollama.generate_request({"model": "m", "prompt": "Hi", "system": "Be brief",
                                          "stream": False, "format": "json"})  # fmt: skip
    assert request["messages"] == [{"role": "system", "content": "Be brief"},
                                   {"role": "user", "content": "Hi"}]  # fmt: skip
    assert request["response_format"] == {"type": "json_object"} and request["stream"] is False
    assert ollama.just_loads({"model": "m"}) and not ollama.just_loads(
        {"model": "m", "prompt": "x"}
    )
    assert ollama.loaded({"model": "m"})["done_reason"] == "load"


@pytest.mark.parametrize(
    "body",
    [{"messages": []}, {"model": "m", "messages": "hi"}, {"model": "m", "messages": [5]},
     {"model": "m", "messages": [], "stream": "yes"}, {"model": "m", "messages": [], "format": 1},
     {"model": "m", "messages": [], "options": []},
     {"model": "m", "messages": [{"role": "user", "content": 5}]},
     {"model": "m", "messages": [{"role": "user", "content": "x", "images": "one"}]},
     {"model": "m", "messages": [{"role": "assistant", "tool_calls": [{"function": {}}]}]}],
)  # fmt: skip
def test_malformed_requests_are_refused_naming_the_field(body: dict[str, Any]) -> None:
    with pytest.raises(BadRequest):
        ollama.chat_request(body)


ANSWER = {
    "choices": [{"finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": "", "reasoning_content": "They want the weather.",
        "tool_calls": [{"id": "c1", "type": "function", "function": {
            "name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]}}],
    "usage": {"prompt_tokens": 11, "completion_tokens": 7},
    "timings": {"prompt_ms": 12.5, "predicted_ms": 40.0},
}  # fmt: skip


def test_a_whole_answer_has_ollamas_fields_and_object_arguments() -> None:
    reply = ollama.chat_answer(ANSWER, {"model": "m:latest"}, ollama.Clock())
    assert reply["message"]["tool_calls"] == [
        {"id": "c1", "function": {"index": 0, "name": "get_weather",
                                  "arguments": {"city": "Paris"}}}]  # fmt: skip
    assert reply["message"]["thinking"] == "They want the weather."
    assert (reply["done"], reply["done_reason"], reply["model"]) == (True, "stop", "m:latest")
    assert (reply["prompt_eval_count"], reply["eval_count"]) == (11, 7)
    assert (reply["prompt_eval_duration"], reply["eval_duration"]) == (12_500_000, 40_000_000)
    generated = ollama.generate_answer(ANSWER, {"model": "m"}, ollama.Clock())
    assert generated["response"] == "" and generated["thinking"] == "They want the weather."


async def _chunks() -> AsyncGenerator[dict[str, Any], None]:
    yield {"choices": [{"delta": {"role": "assistant", "content": "Par"}}]}
    yield {"choices": [{"delta": {"content": "is"}}]}
    yield {
        "choices": [
            {
                "delta": {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "c1",
                            "function": {"name": "get_weather", "arguments": '{"ci'},
                        }
                    ]
                }
            }
        ]
    }
    yield {
        "choices": [
            {
                "delta": {"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Paris"}'}}]},
                "finish_reason": "length",
            }
        ]
    }
    yield {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2},
           "timings": {"prompt_ms": 1.0, "predicted_ms": 2.0}}  # fmt: skip


async def test_a_stream_is_ndjson_ending_done_with_the_calls_assembled() -> None:
    out = [orjson.loads(line) async for line in
           ollama.stream(_chunks(), {"model": "m"}, False, ollama.Clock())]  # fmt: skip
    assert [e["message"]["content"] for e in out] == ["Par", "is", ""]
    assert [e["done"] for e in out] == [False, False, True]
    last = out[-1]
    assert last["message"]["tool_calls"] == [
        {"id": "c1", "function": {"index": 0, "name": "get_weather",
                                  "arguments": {"city": "Paris"}}}]  # fmt: skip
    assert last["done_reason"] == "length" and last["eval_count"] == 2
    assert last["eval_duration"] == 2_000_000


def test_num_ctx_is_checked_and_answered_not_sent_or_ignored() -> None:
    body = {"model": "m", "prompt": "Hi", "options": {"num_ctx": 8192, "num_thread": 4}}
    request, ignored = ollama.generate_request(body)
    assert ollama.num_ctx(body) == 8192 and "num_ctx" not in str(request)
    assert ignored == ["options.num_thread"]  # (a node's own setting: named, not sent)
    assert ollama.num_ctx({"model": "m"}) is None
    assert ollama.num_ctx({"options": {"num_ctx": 4096.0}}) == 4096  # (a number, as Ollama's)
    assert ollama.num_ctx({"options": {"num_ctx": 1 << 40}}) == ollama.MAX_NUM_CTX
    for bad in (0, -1, "8k", 0.5, True, [4096]):
        with pytest.raises(BadRequest) as refused:
            ollama.num_ctx({"model": "m", "options": {"num_ctx": bad}})
        assert refused.value.param == "options.num_ctx"


def test_raw_is_a_text_completion_of_the_prompt_as_written() -> None:
    body = {"model": "m", "prompt": "<s>The capital of France is", "raw": True,
            "stream": False, "think": False, "keep_alive": 0,
            "options": {"num_predict": 4, "temperature": 0}}  # fmt: skip
    request, ignored = ollama.generate_request(body)
    assert request == {"model": "m", "prompt": "<s>The capital of France is", "stream": False,
                       "max_tokens": 4, "temperature": 0}  # fmt: skip
    assert ignored == ["keep_alive"] and ollama.is_raw(body)
    # Structured output in raw mode: llama.cpp constrains a completion by json_schema.
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    for given, sent in (({"format": schema}, schema), ({"format": "json"}, {"type": "object"})):
        constrained, _ = ollama.generate_request({**body, **given})
        assert constrained["json_schema"] == sent and "response_format" not in constrained
    completion = {"choices": [{"text": " Paris", "finish_reason": "length"}],
                  "usage": {"prompt_tokens": 6, "completion_tokens": 4}}  # fmt: skip
    reply = ollama.generate_answer(completion, body, ollama.Clock())
    assert (reply["response"], reply["done_reason"], reply["eval_count"]) == (" Paris", "length", 4)
    for refused, field in (({"raw": "yes"}, "raw"), ({"raw": True, "images": [PNG]}, "images"),
                           ({"raw": True, "system": "Be brief"}, "raw"),  # (as Ollama does)
                           ({"raw": True, "template": "{{ .Prompt }}"}, "raw"),
                           ({"suffix": "return x"}, "suffix")):  # fmt: skip
        with pytest.raises(BadRequest) as error:
            ollama.generate_request({"model": "m", "prompt": "def f(x):", **refused})
        assert error.value.param == field
    with pytest.raises(BadRequest, match="does not support insert"):
        ollama.generate_request({"model": "m", "suffix": "x"})


async def test_a_raw_stream_carries_the_completions_text() -> None:
    async def pieces() -> AsyncGenerator[dict[str, Any], None]:
        for text in (" Par", "is"):
            yield {"choices": [{"index": 0, "text": text, "finish_reason": None}]}
        yield {"choices": [{"index": 0, "text": "", "finish_reason": "stop"}]}

    out = [orjson.loads(line) async for line in
           ollama.stream(pieces(), {"model": "m"}, True, ollama.Clock())]  # fmt: skip
    assert [e["response"] for e in out] == [" Par", "is", ""]
    assert out[-1]["done"] is True and out[-1]["done_reason"] == "stop"


NODE_STREAM = b"".join(
    b"data: " + orjson.dumps(chunk) + b"\n\n"
    for chunk in [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Pa"}}]},
        {"choices": [{"index": 0, "delta": {"content": "ris été"}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
         "usage": {"prompt_tokens": 5, "completion_tokens": 2}},
    ]
) + b"data: [DONE]\n\n"  # fmt: skip


async def _ndjson(parts: list[bytes]) -> list[dict[str, Any]]:
    """The NDJSON lines for a node's stream that arrives in ``parts``, without the clock's
    figures (they differ from run to run)."""
    from llmlb.router.cloud.gateway import _node_chunks

    async def arriving() -> AsyncGenerator[bytes, None]:
        for part in parts:
            yield part

    lines = [line async for line in ollama.stream(_node_chunks("n", arriving()), {"model": "m"},
                                                  False, ollama.Clock())]  # fmt: skip
    assert all(line.endswith(b"\n") and line.count(b"\n") == 1 for line in lines)
    volatile = ("created_at", "total_duration")
    return [{k: v for k, v in orjson.loads(line).items() if k not in volatile} for line in lines]


async def test_the_ndjson_is_the_same_wherever_the_nodes_stream_is_split() -> None:
    whole = await _ndjson([NODE_STREAM])
    assert "".join(e["message"]["content"] for e in whole) == "Paris été"
    assert whole[-1]["done"] is True and whole[-1]["eval_count"] == 2
    for cut in range(1, len(NODE_STREAM)):  # every byte, inside UTF-8 characters too
        assert await _ndjson([NODE_STREAM[:cut], NODE_STREAM[cut:]]) == whole, cut
    one_by_one = [NODE_STREAM[i : i + 1] for i in range(len(NODE_STREAM))]
    assert await _ndjson(one_by_one) == whole
