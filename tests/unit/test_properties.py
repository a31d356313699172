"""Property tests (Hypothesis): the SSE parser, model names and the cloud translators hold
their contracts on any input, not only on the examples the other tests pick.

- The SSE parser gives back exactly the events that were sent, whatever the line endings and
  however the bytes are split, and on arbitrary bytes it either parses or says the stream is
  broken (bounded), nothing else.
- A model name is refused with a 400 or is a single safe path segment inside the store;
  canonical names are fixed points.
- A translator, given a request that passed the typed check and any provider event, answers
  or refuses with an LlmlbError: never another exception, which would be a 500.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from llmlb.common.errors import BadRequest, LlmlbError
from llmlb.common.names import canonical_name, validate_name
from llmlb.models.store import ModelStore
from llmlb.translate.chat import check_request
from llmlb.translate.providers import PROVIDERS
from llmlb.translate.providers.base import MALFORMED_EVENT, StreamFailed
from llmlb.translate.sse import MAX_EVENT_BYTES, ServerEvent, SSEParser, StreamBroken

CHECKS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- SSE ----------------------------------------------------------------------------------

line_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"),
    max_size=40,
)
events = st.lists(
    st.tuples(
        st.none() | line_text.filter(lambda t: t != "" and ":" not in t and not t.startswith(" ")),
        st.lists(line_text, min_size=1, max_size=4),
    ),
    max_size=8,
)


@CHECKS
@given(events, st.sampled_from(["\n", "\r\n", "\r"]), st.data())
def test_sse_gives_back_every_event_however_split(
    sent: list[tuple[str | None, list[str]]], newline: str, data: st.DataObject
) -> None:
    wire = ""
    for name, lines in sent:
        wire += f"event: {name}{newline}" if name is not None else ""
        wire += "".join(f"data: {line}{newline}" for line in lines) + newline
    raw = wire.encode()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=6)))
    parser = SSEParser()
    got: list[ServerEvent] = []
    for start, end in zip([0, *cuts], [*cuts, len(raw)], strict=True):
        got += parser.feed(raw[start:end])
    got += parser.finish()
    assert [(e.event, e.data) for e in got] == [(n, "\n".join(lines)) for n, lines in sent]


@CHECKS
@given(st.lists(st.binary(max_size=200), max_size=10))
def test_sse_takes_any_bytes(chunks: list[bytes]) -> None:
    parser = SSEParser()
    try:
        for chunk in chunks:
            for event in parser.feed(chunk):
                assert isinstance(event.data, str)
        parser.finish()
    except StreamBroken:
        pytest.fail("small input is never too large")


def test_sse_bounds_one_event() -> None:
    parser = SSEParser()
    line = b"data: " + b"x" * ((1 << 20) - 7) + b"\n"  # 1 MiB with its name and end
    for _ in range(MAX_EVENT_BYTES >> 20):  # never an empty line: one event grows
        parser.feed(line)  # up to the bound is fine
    with pytest.raises(StreamBroken):
        parser.feed(line)


def test_sse_bounds_an_event_of_empty_data_lines_as_they_come() -> None:
    """``data:`` lines with nothing after them and no blank line: each adds a line and its
    bytes, so a stream of them is refused within the bound, not read to its end."""
    parser = SSEParser()
    chunk = b"data:\n" * 10_000  # 60 KB a read
    parser.feed(chunk)  # 10,000 lines: at the bound
    with pytest.raises(StreamBroken, match="lines"):
        parser.feed(chunk)  # refused at once, not after the 19 MB that may follow


def test_sse_takes_a_long_line_sent_byte_by_byte() -> None:
    parser = SSEParser()
    line = b"data: " + b"y" * 100_000
    for byte in range(len(line)):
        assert parser.feed(line[byte : byte + 1]) == []
    assert parser.feed(b"\n\n") == [ServerEvent(None, "y" * 100_000)]


# -- names --------------------------------------------------------------------------------


@CHECKS
@given(st.text(max_size=80) | st.from_regex(r"[a-z0-9.:/\\_-]{1,30}", fullmatch=True))
def test_a_name_is_refused_or_stays_inside_the_store(name: str) -> None:
    root = Path("/srv/llmlb/models")
    try:
        safe = validate_name(canonical_name(name), name)
    except BadRequest as exc:
        refused = exc.status
        assert refused == 400
        return
    folder = ModelStore(root).folder(safe)
    assert folder.parent == root and folder.name == safe
    assert safe not in (".", "..") and "/" not in safe and "\\" not in safe and ":" not in safe
    assert canonical_name(safe) == safe  # canonical names are fixed points


# -- translators --------------------------------------------------------------------------

json_scalar = st.none() | st.booleans() | st.integers(-(2**31), 2**31) | line_text
json_value = st.recursive(
    json_scalar,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(line_text, inner, max_size=3),
    max_leaves=12,
)
content = line_text | st.lists(
    st.fixed_dictionaries({"type": st.just("text"), "text": line_text}), max_size=2
)
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "developer", "user", "assistant", "tool"])},
    optional={
        "content": content | st.none(),
        "tool_call_id": line_text,
        "tool_calls": st.lists(
            st.fixed_dictionaries({
                "id": line_text, "type": st.just("function"),
                "function": st.fixed_dictionaries({"name": line_text, "arguments": line_text}),
            }),
            max_size=2,
        ),
    },
)  # fmt: skip
chat_body = st.fixed_dictionaries(
    {"model": st.just("m"), "messages": st.lists(message, min_size=1, max_size=4)},
    optional={
        "max_tokens": st.integers(1, 10_000), "temperature": st.floats(0, 2),
        "top_p": st.floats(0, 1), "stop": line_text | st.lists(line_text, max_size=3),
        "stream": st.booleans(), "n": st.integers(1, 3), "user": line_text,
        "tools": st.lists(st.fixed_dictionaries({
            "type": st.just("function"),
            "function": st.fixed_dictionaries({"name": line_text},
                                              optional={"parameters": json_value}),
        }), max_size=2),
        "tool_choice": st.sampled_from(["auto", "none", "required"]),
        "extra": json_value,
    },
)  # fmt: skip


def provider(name: str) -> Any:
    return PROVIDERS[name]("sk-test", "http://127.0.0.1:9", 1 << 20)


@CHECKS
@given(st.sampled_from(sorted(PROVIDERS)), chat_body)
def test_a_checked_request_translates_or_is_refused_with_a_4xx(
    name: str, body: dict[str, Any]
) -> None:
    try:
        check_request(body)
        request = provider(name).chat_request(body, "model-x", bool(body.get("stream")))
    except LlmlbError as exc:
        refusal = exc
    else:
        assert request.path.startswith("/") and isinstance(request.payload, dict)
        return
    assert 400 <= refusal.status < 500, refusal.message


provider_event = st.builds(
    ServerEvent,
    st.none() | st.sampled_from(["message_start", "content_block_delta", "error", "ping"]),
    json_value.map(json.dumps) | line_text,
)


@CHECKS
@given(st.sampled_from(sorted(PROVIDERS)), st.lists(provider_event, max_size=6))
def test_a_stream_translator_takes_any_event(name: str, feed: list[ServerEvent]) -> None:
    translator = provider(name).chat_stream("model-x")
    for event in feed:
        try:
            chunks = translator.feed(event)
        except (StreamFailed, LlmlbError, *MALFORMED_EVENT):
            return  # what the gateway turns into a clear 502 (router.cloud.gateway)
        assert all(isinstance(chunk, dict) for chunk in chunks)
