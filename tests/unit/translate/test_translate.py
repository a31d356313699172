"""Translation without sockets: SSE framing, provider streams, dialect events, the gate."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import AsyncGenerator
from typing import Any

import orjson
import pytest

from llmlb.common.errors import BadRequest, Overloaded, UpstreamFailed, UpstreamTimeout
from llmlb.router.cloud.clouds import Gate, _retry_after
from llmlb.translate import chat
from llmlb.translate.dialects import messages, responses
from llmlb.translate.providers.anthropic import Anthropic
from llmlb.translate.providers.base import StreamFailed
from llmlb.translate.providers.google import Google
from llmlb.translate.providers.openai import OpenAI
from llmlb.translate.sse import ServerEvent, SSEParser, encode


def parse_all(data: bytes, cut: int) -> list[ServerEvent]:
    parser = SSEParser()
    return parser.feed(data[:cut]) + parser.feed(data[cut:]) + parser.finish()


def test_sse_events_survive_any_split_and_any_line_ending() -> None:
    stream = (b": keep-alive\r\nevent: a\r\ndata: {\"x\":1}\r\n\r\n"
              b"data: line one\ndata: line two\n\n" b"data: [DONE]\r\r")  # fmt: skip
    expected = [ServerEvent("a", '{"x":1}'), ServerEvent(None, "line one\nline two"),
                ServerEvent(None, "[DONE]")]  # fmt: skip
    for cut in range(len(stream) + 1):
        assert parse_all(stream, cut) == expected, cut


def anthropic_events(*events: dict[str, Any]) -> list[ServerEvent]:
    return [ServerEvent(e["type"], orjson.dumps(e).decode()) for e in events]


def feed_all(translator: Any, events: list[ServerEvent]) -> list[dict[str, Any]]:
    return [chunk for event in events for chunk in translator.feed(event)]


def test_an_anthropic_stream_becomes_chat_chunks_with_tool_calls_and_usage() -> None:
    translator = Anthropic("k", "http://x", 1000).chat_stream("claude")
    chunks = feed_all(translator, anthropic_events(
        {"type": "message_start", "message": {"id": "msg_1", "model": "claude-x",
                                              "usage": {"input_tokens": 9}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text",
                                                                      "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta",
                                                              "text": "Let me look."}},
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": {
            "type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}},
        {"type": "ping"},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta",
                                                              "partial_json": '{"city":'}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta",
                                                              "partial_json": '"Oslo"}'}},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"},
         "usage": {"output_tokens": 12}},
        {"type": "message_stop"},
    ))  # fmt: skip
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas[1] == {"content": "Let me look."}
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert calls[0] == {"index": 0, "id": "toolu_1", "type": "function",
                        "function": {"name": "get_weather", "arguments": ""}}  # fmt: skip
    assert "".join(c["function"]["arguments"] for c in calls) == '{"city":"Oslo"}'
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"] == chat.usage(9, 12) and translator.finished


def test_an_error_event_inside_a_stream_fails_it() -> None:
    translator = Anthropic("k", "http://x", 1000).chat_stream("claude")
    with pytest.raises(StreamFailed, match="Overloaded"):
        feed_all(
            translator,
            anthropic_events(
                {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
            ),
        )


def test_a_gemini_stream_finishes_on_its_finish_reason() -> None:
    translator = Google("k", "http://x", 1000).chat_stream("gemini")
    events = [ServerEvent(None, orjson.dumps(e).decode()) for e in (
        {"candidates": [{"content": {"parts": [{"text": "Hel"}], "role": "model"}}]},
        {"candidates": [{"content": {"parts": [{"text": "lo"}], "role": "model"},
                         "finishReason": "MAX_TOKENS"}],
         "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 2}},
    )]  # fmt: skip
    chunks = feed_all(translator, events)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "Hello" and translator.finished
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"] == chat.usage(4, 2)


def test_fields_a_provider_lacks_are_named_and_meaning_changes_are_refused() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "logprobs": True,
            "seed": 3}  # fmt: skip
    assert Anthropic("k", "http://x", 1000).chat_request(body, "m", False).ignored == [
        "logprobs", "seed"]  # fmt: skip
    assert Google("k", "http://x", 1000).chat_request(body, "m", False).ignored == ["logprobs"]
    with pytest.raises(BadRequest, match="'n' must be 1"):
        Anthropic("k", "http://x", 1000).chat_request({**body, "n": 2}, "m", False)


def test_a_gemini_model_name_cannot_reach_another_path() -> None:
    body = {"messages": [{"role": "user", "content": "hi"}]}
    for name in ("../../v1/files", "gemini?alt=x", "a/b"):
        with pytest.raises(BadRequest, match="not a Gemini model name"):
            Google("k", "http://x", 1000).chat_request(body, name, False)


def test_provider_error_bodies_give_their_message() -> None:
    assert Anthropic("k", "u", 1).error_of(
        b'{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}'
    ) == ("slow down", "rate_limit_error")  # fmt: skip
    assert Google("k", "u", 1).error_of(
        b'{"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED"}}'
    ) == ("quota", "RESOURCE_EXHAUSTED")  # fmt: skip
    assert OpenAI("k", "u", 1).error_of(b"<html>bad gateway</html>") == (
        "<html>bad gateway</html>", None)  # fmt: skip


def test_messages_tool_results_come_before_the_text_of_their_turn() -> None:
    request, ignored = messages.to_chat({
        "model": "m", "max_tokens": 5, "top_k": 3, "messages": [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "w",
                                               "input": {"city": "Oslo"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                                          "content": [{"type": "text", "text": "cold"}]},
                                         {"type": "text", "text": "And tomorrow?"}]},
        ]})  # fmt: skip
    assert [m["role"] for m in request["messages"]] == ["user", "assistant", "tool", "user"]
    assert request["messages"][2] == {"role": "tool", "tool_call_id": "t1", "content": "cold"}
    assert request["messages"][1]["tool_calls"][0]["function"]["arguments"] == '{"city":"Oslo"}'
    assert ignored == ["top_k"]


async def chunks_then_failure() -> AsyncGenerator[dict[str, Any], None]:
    yield chat.chunk("c1", "m", {"role": "assistant", "content": ""})
    yield chat.chunk("c1", "m", {"content": "Hi"})
    raise UpstreamFailed("the node vanished")


async def test_a_failure_mid_stream_ends_a_responses_stream_with_error_events() -> None:
    events = [e async for e in responses.stream(chunks_then_failure(), {"model": "m"})]
    kinds = [orjson.loads(e.split(b"data: ", 1)[1])["type"] for e in events]
    assert kinds[-2:] == ["error", "response.failed"]
    assert b"the node vanished" in events[-2]


async def test_a_failure_mid_stream_ends_a_messages_stream_with_an_error_event() -> None:
    events = [e async for e in messages.stream(chunks_then_failure(), {"model": "m"})]
    assert events[-1].startswith(b"event: error\n")
    assert orjson.loads(events[-1].split(b"data: ", 1)[1])["error"]["type"] == "api_error"


def test_retry_after_in_seconds_or_as_a_date() -> None:
    assert _retry_after("7", 1) == 7.0
    soon = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < _retry_after(soon, 1) <= 30
    assert _retry_after("soon-ish", 2) == 1.0  # unreadable: the backoff
    assert _retry_after(None, 1) == 0.5


async def test_the_gate_caps_calls_queues_in_order_and_bounds_the_queue() -> None:
    gate = Gate("p", limit=1, queue_size=1, queue_timeout=5)
    await gate.enter()
    waiting = asyncio.create_task(gate.enter())
    await asyncio.sleep(0)
    with pytest.raises(Overloaded):
        await gate.enter()  # the queue holds one
    assert not waiting.done()
    gate.leave()  # the slot passes to the waiter
    await asyncio.wait_for(waiting, 1)
    assert gate.active == 1
    gate.leave()
    assert gate.active == 0


async def test_a_queued_call_times_out_and_a_cancelled_one_loses_no_slot() -> None:
    gate = Gate("p", limit=1, queue_size=4, queue_timeout=0.05)
    await gate.enter()
    with pytest.raises(UpstreamTimeout):
        await gate.enter()
    gate._line.timeout = 5  # the next waits long enough to be cancelled
    left = asyncio.create_task(gate.enter())
    await asyncio.sleep(0)
    left.cancel()
    with pytest.raises(asyncio.CancelledError):
        await left
    gate.leave()
    assert gate.active == 0
    await asyncio.wait_for(gate.enter(), 1)  # free again at once


def test_encode_frames_named_events() -> None:
    assert encode({"a": 1}, "x") == b'event: x\ndata: {"a":1}\n\n'


@pytest.mark.parametrize("dialect", [responses, messages])
async def test_a_client_that_leaves_after_the_first_event_releases_the_upstream(
    dialect: Any,
) -> None:
    """The first event goes out before any chunk is needed; closing the stream there must
    still close the upstream's stream (its ``finally`` frees a node slot or a provider call)."""
    released = False

    async def upstream() -> AsyncGenerator[dict[str, Any], None]:
        nonlocal released
        try:
            yield chat.chunk("c1", "m", {"role": "assistant", "content": ""})
            yield chat.chunk("c1", "m", {"content": "Hi"})
        finally:
            released = True

    events = dialect.stream(upstream(), {"model": "m"})
    await anext(events)
    await events.aclose()
    assert released


def test_an_earlier_refusal_in_a_responses_conversation_is_the_assistants_words() -> None:
    """The Responses API hands back an assistant's refusal as a content part of its own
    type; a client that sends the conversation back sends it too."""
    chat_body, _ = responses.to_chat({"model": "m", "input": [
        {"role": "user", "content": "Pick a lock for me"},
        {"type": "message", "role": "assistant",
         "content": [{"type": "refusal", "refusal": "I can't help with that."}]},
        {"role": "user", "content": "Then a poem"},
    ]})  # fmt: skip
    assert chat_body["messages"][1] == {
        "role": "assistant",
        "content": [{"type": "text", "text": "I can't help with that."}],
    }
    a_file = {"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]}
    with pytest.raises(BadRequest, match="input_file"):
        responses.to_chat({"model": "m", "input": [a_file]})


def test_a_responses_input_of_reasoning_alone_is_refused_by_its_own_name() -> None:
    """Reasoning items are passed over; with nothing else, there is nothing to answer, and
    the client hears that of its 'input' (not of chat's 'messages' list being empty)."""
    thoughts = {"type": "reasoning", "id": "rs_1", "summary": []}
    with pytest.raises(BadRequest, match="holds no message") as refused:
        responses.to_chat({"model": "m", "instructions": "", "input": [thoughts]})
    assert refused.value.param == "input"
    chat_body, _ = responses.to_chat(
        {"model": "m", "input": [thoughts, {"role": "user", "content": "Hi"}]}
    )
    assert chat_body["messages"] == [{"role": "user", "content": "Hi"}]
