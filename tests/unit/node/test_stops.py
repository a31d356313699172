"""The client's stop sequences, matched by the node (node.stops): whichever way the text is
split, the answer ends before the first sequence and says which one it was."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from hypothesis import given, strategies as st

from llmlb.node.stops import StopMatcher, honour_stops

TEXT = "The capital of France is Paris. The capital of Italy is Rome."


def split(text: str, cuts: list[int]) -> list[str]:
    points = sorted({0, len(text), *(c % (len(text) + 1) for c in cuts)})
    return [text[a:b] for a, b in itertools.pairwise(points)]


@given(st.lists(st.integers(0, 200), max_size=12))
def test_the_text_before_the_first_stop_is_given_however_it_is_split(cuts: list[int]) -> None:
    matcher = StopMatcher(["Rome", "Paris.", "zzz"])
    given_text, stop = "", None
    for piece in split(TEXT, cuts):
        before, stop = matcher.feed(piece)
        given_text += before
        if stop is not None:
            break
    assert (given_text, stop) == ("The capital of France is ", "Paris.")


@given(st.lists(st.integers(0, 200), max_size=12))
def test_without_a_stop_everything_comes_through(cuts: list[int]) -> None:
    matcher = StopMatcher(["Madrid", "Italy is Romeo"])
    given_text = "".join(matcher.feed(piece)[0] for piece in split(TEXT, cuts))
    assert given_text + matcher.flush() == TEXT


def chunk(text: str | None, finish: str | None = None, **extra: Any) -> bytes:
    delta = {"content": text} if text is not None else {"role": "assistant"}
    return orjson.dumps({"id": "x", "model": "m", "object": "chat.completion.chunk",
                         "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                         **extra})  # fmt: skip


async def stream(*chunks: bytes) -> AsyncIterator[bytes]:
    for piece in chunks:
        yield piece


@pytest.mark.parametrize("stop", ["Paris", "is Pa"])
async def test_a_stream_ends_at_the_stop_with_its_reason_and_usage(stop: str) -> None:
    timings = {"cache_n": 3, "prompt_n": 4, "predicted_n": 6}
    pieces = [chunk(None), *(chunk(w, timings=timings) for w in ["The", " capital", " is",
              " Paris", "."]), chunk("never")]  # fmt: skip
    out = [orjson.loads(c) async for c in honour_stops([stop], "chat", stream(*pieces))]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in out if c["choices"])
    assert text == "The capital is Paris."[: "The capital is Paris.".index(stop)]
    ended = next(c for c in out if c["choices"] and c["choices"][0]["finish_reason"])
    assert ended["choices"][0]["stop_reason"] == stop
    assert out[-1]["usage"] == {"prompt_tokens": 7, "completion_tokens": 6, "total_tokens": 13}
