"""Whole answers assembled from llama.cpp's stream chunks (the node streams everything)."""

from __future__ import annotations

from typing import Any

from llmlb.node.assemble import assemble

HEAD = {"id": "chatcmpl-1", "created": 7, "model": "m", "system_fingerprint": "b1"}


def chat_chunk(index: int = 0, finish: str | None = None, **delta: Any) -> dict[str, Any]:
    return {**HEAD, "object": "chat.completion.chunk",
            "choices": [{"index": index, "finish_reason": finish, "delta": delta}]}  # fmt: skip


USAGE = {
    **HEAD,
    "choices": [],
    "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
    "timings": {"predicted_n": 3},
}


def test_chat_text_usage_and_finish_reason() -> None:
    answer = assemble("chat", [
        chat_chunk(role="assistant", content=None), chat_chunk(content="Par"),
        chat_chunk(content="is"), chat_chunk(finish="stop"), USAGE,
    ])  # fmt: skip
    assert answer["object"] == "chat.completion"
    assert answer["id"] == "chatcmpl-1" and answer["model"] == "m"
    # OpenAI's schema requires ``logprobs`` and ``message.refusal``: null when absent.
    assert answer["choices"] == [
        {"index": 0, "finish_reason": "stop", "logprobs": None,
         "message": {"role": "assistant", "content": "Paris", "refusal": None}}
    ]  # fmt: skip
    assert answer["usage"]["completion_tokens"] == 3
    assert answer["timings"] == {"predicted_n": 3}


def test_chat_tool_calls_are_merged_by_index() -> None:
    answer = assemble("chat", [
        chat_chunk(role="assistant", content=None),
        chat_chunk(tool_calls=[{"index": 0, "id": "call_1", "type": "function",
                                "function": {"name": "get_", "arguments": ""}}]),
        chat_chunk(tool_calls=[{"index": 0, "function": {"name": "weather",
                                                         "arguments": '{"city":'}}]),
        chat_chunk(tool_calls=[{"index": 0, "function": {"arguments": '"Paris"}'}}]),
        chat_chunk(finish="tool_calls"),
    ])  # fmt: skip
    message = answer["choices"][0]["message"]
    assert message["content"] is None
    assert message["tool_calls"] == [{"id": "call_1", "type": "function", "function": {
        "name": "get_weather", "arguments": '{"city":"Paris"}'}}]  # fmt: skip
    assert answer["choices"][0]["finish_reason"] == "tool_calls"


def test_reasoning_and_log_probabilities_are_kept() -> None:
    first = chat_chunk(reasoning_content="think", content="A")
    first["choices"][0]["logprobs"] = {"content": [{"token": "A", "logprob": -0.1}]}
    answer = assemble("chat", [first, chat_chunk(finish="stop")])
    choice = answer["choices"][0]
    assert choice["message"]["reasoning_content"] == "think"
    assert choice["logprobs"] == {"content": [{"token": "A", "logprob": -0.1}], "refusal": None}


def test_text_completions_with_several_choices() -> None:
    def chunk(index: int, text: str, finish: str | None = None) -> dict[str, Any]:
        return {**HEAD, "object": "text_completion",
                "choices": [{"index": index, "text": text, "finish_reason": finish}]}  # fmt: skip

    answer = assemble("completion", [
        chunk(0, "Once"), chunk(1, "Twice"), chunk(0, " upon", "length"), chunk(1, "", "stop"),
    ])  # fmt: skip
    assert answer["object"] == "text_completion"
    assert [(c["index"], c["text"], c["finish_reason"]) for c in answer["choices"]] == [
        (0, "Once upon", "length"), (1, "Twice", "stop"),
    ]  # fmt: skip
    assert "usage" not in answer
