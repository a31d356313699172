"""Answers from nodes and providers are checked for the shape translation reads, at the
door: a wrong type anywhere is one ValueError there, never a crash later in a dialect."""

from __future__ import annotations

from typing import Any

import pytest

from llmlb.translate.shapes import checked_chunk, checked_completion

CALL = {"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
GOOD_CHUNKS: list[Any] = [
    {"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]},
    {"choices": [{"index": 0, "delta": {"tool_calls": [CALL]}}], "model": "m", "created": 1},
    {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}},
    {"choices": [{"delta": {"content": None, "reasoning_content": "hm"}}], "extra": [1, "x"]},
]
BAD_CHUNKS: list[tuple[Any, str]] = [
    ([], "not a JSON object"),
    ({"choices": "x"}, "'choices' is not a list"),
    ({"choices": ["x"]}, "a choice is not"),
    ({"choices": [{"delta": "x"}]}, "delta is not"),
    ({"choices": [{"delta": {"content": 5}}]}, "'content'"),
    ({"choices": [{"delta": {"tool_calls": {"a": 1}}}]}, "'tool_calls' is not a list"),
    ({"choices": [{"delta": {"tool_calls": [{**CALL, "function": {"arguments": 5}}]}}]},
     "'arguments'"),
    ({"choices": [{"delta": {"tool_calls": [{**CALL, "index": "0"}]}}]}, "'index'"),
    ({"choices": [{"finish_reason": 1}]}, "'finish_reason'"),
    ({"usage": {"prompt_tokens": "3"}}, "'prompt_tokens'"),
    ({"usage": {"completion_tokens": True}}, "'completion_tokens'"),
    ({"model": ["m"]}, "'model'"),
]  # fmt: skip


@pytest.mark.parametrize("chunk", GOOD_CHUNKS)
def test_a_well_formed_chunk_passes_as_it_is(chunk: Any) -> None:
    assert checked_chunk(chunk) is chunk


@pytest.mark.parametrize(("chunk", "reason"), BAD_CHUNKS)
def test_a_malformed_chunk_is_a_value_error_saying_what(chunk: Any, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        checked_chunk(chunk)


def test_a_whole_answer_is_checked_the_same_way() -> None:
    good = {"choices": [{"message": {"content": "hi", "tool_calls": [CALL]}}], "created": 1.5}
    assert checked_completion(good) is good
    with pytest.raises(ValueError, match="'arguments'"):
        checked_completion({"choices": [{"message": {"tool_calls": [
            {"function": {"arguments": 5}}]}}]})  # fmt: skip
    with pytest.raises(ValueError, match="message is not"):
        checked_completion({"choices": [{"message": "hi"}]})
