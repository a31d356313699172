"""Answers no node or provider should send, through the endpoints that translate them (the
Messages and Responses dialects, and cloud chat): every one ends in the client's own
dialect, a 502 or a stream's error event, and never as a connection cut mid-body."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.fakenode import RawNode, RawRequest
from tests.support import Process, ThreadServer, node_token, start_router, wait_until

OPENAI_KEY = "sk-hostile-0123456789"


def _chunk(delta: dict[str, Any]) -> bytes:
    data = {"id": "chatcmpl-h", "object": "chat.completion.chunk", "created": 0, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}  # fmt: skip
    return b"data: " + orjson.dumps(data) + b"\n\n"


_START = _chunk({"role": "assistant", "content": "Hel"})
# Streams that begin well and then go wrong, and what the client is told.
STREAMS = {
    "not-json": (_START + b"data: {not json\n\n", "malformed event"),
    "choices-a-string": (_START + b'data: {"choices": "x"}\n\n', "malformed event"),
    "arguments-a-number": (
        _START + _chunk({"tool_calls": [
            {"index": 0, "id": "c1", "type": "function",
             "function": {"name": "f", "arguments": 5}}]}),
        "malformed event",
    ),
    "event-over-8-mib": (_START + b"data: " + b"x" * (9 << 20) + b"\n\n", "broken stream"),
    "endless-data-lines": (_START + b"data:\n" * 400_000, "broken stream"),
}  # fmt: skip
WHOLES = {
    "not-json": b"{not json",
    "choices-a-string": b'{"choices": "x"}',
    "arguments-a-number": orjson.dumps({"choices": [{"index": 0, "finish_reason": "tool_calls",
        "message": {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
        "function": {"name": "f", "arguments": 5}}]}}]}),
}  # fmt: skip


def hostile_openai() -> ThreadServer:
    """OpenAI's chat endpoint, answering with the fault the model names."""

    async def chat(request: Request) -> Response:
        body = orjson.loads(await request.body())
        fault = str(body["model"])
        if body.get("stream"):
            return Response(STREAMS[fault][0], media_type="text/event-stream")
        return Response(WHOLES[fault], media_type="application/json")

    return ThreadServer(Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])]))


def hostile_node_handler(stream_fault: str, whole_fault: str | None) -> Any:
    async def handler(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        if request.json().get("stream"):
            body = STREAMS[stream_fault][0]
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                + request.echoed()
                + b"content-length: %d\r\n\r\n" % len(body)
            )
            writer.write(body)
        else:
            body = WHOLES[whole_fault or "not-json"]
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                + request.echoed()
                + b"content-length: %d\r\n\r\n%s" % (len(body), body)
            )
        return True

    return handler


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    provider = hostile_openai()
    home = tmp_path_factory.mktemp("hostile-answers")
    env = {"OPENAI_API_KEY": OPENAI_KEY, "OPENAI_BASE_URL": provider.url + "/v1",
           "LLMLB_AUTO_DISTRIBUTE": "none", "LLMLB_REQUEST_TIMEOUT": "60"}  # fmt: skip
    process = start_router(home, home, env=env)
    nodes = []
    for fault in STREAMS:
        node = RawNode(
            f"hostile-{fault}",
            model=f"local-{fault}",
            handler=hostile_node_handler(fault, fault if fault in WHOLES else None),
        )
        nodes.append(node.start())
        node.join(process.url, node_token(home), interval=5)
    with httpx.Client(base_url=process.url) as http:
        wait_until(
            lambda: (
                sum(n["status"] == "ready" for n in http.get("/api/nodes").json()["data"])
                == len(nodes)
            )
        )
    yield process
    for node in nodes:
        node.stop()
    process.stop()
    provider.stop()


def events_of(text: str) -> list[tuple[str | None, str]]:
    """(event name, data) of each event in an SSE body."""
    found = []
    for block in text.split("\n\n"):
        name = data = None
        for line in block.splitlines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
        if data is not None:
            found.append((name, data))
    return found


MODELS = [f"{where}{fault}" for fault in STREAMS for where in ("local-", "openai:")]


@pytest.mark.parametrize("model", MODELS)
def test_a_broken_stream_ends_in_an_anthropic_error_event(router: Process, model: str) -> None:
    fault = model.split("-", 1)[1] if model.startswith("local-") else model.split(":", 1)[1]
    body = {"model": model, "max_tokens": 16, "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    with httpx.Client(base_url=router.url, timeout=60) as http:
        answer = http.post("/v1/messages", json=body)  # a cut body raises here
    assert answer.status_code == 200
    name, data = events_of(answer.text)[-1]
    assert name == "error"
    error = orjson.loads(data)
    assert error["type"] == "error"
    assert STREAMS[fault][1] in error["error"]["message"]


@pytest.mark.parametrize("fault", list(STREAMS))
def test_a_broken_stream_ends_in_a_failed_response(router: Process, fault: str) -> None:
    # (OpenAI speaks Responses itself: an openai: model's stream is relayed as it is.)
    body = {"model": f"local-{fault}", "stream": True, "input": "hi"}
    with httpx.Client(base_url=router.url, timeout=60) as http:
        answer = http.post("/v1/responses", json=body)
    assert answer.status_code == 200
    events = events_of(answer.text)
    name, data = events[-1]
    assert name == "response.failed"
    assert STREAMS[fault][1] in orjson.loads(data)["response"]["error"]["message"]


@pytest.mark.parametrize("fault", list(STREAMS))
def test_a_broken_cloud_stream_on_chat_ends_in_an_error_event(router: Process, fault: str) -> None:
    body = {"model": f"openai:{fault}", "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    with httpx.Client(base_url=router.url, timeout=60) as http:
        answer = http.post("/v1/chat/completions", json=body)
    events = events_of(answer.text)
    assert events[-1] == (None, "[DONE]")
    assert STREAMS[fault][1] in orjson.loads(events[-2][1])["error"]["message"]


@pytest.mark.parametrize("fault", list(WHOLES))
@pytest.mark.parametrize(
    ("where", "path"),
    [("local-", "/v1/messages"), ("openai:", "/v1/messages"), ("local-", "/v1/responses")],
)
def test_a_malformed_whole_answer_is_a_502_in_the_dialects_shape(
    router: Process, fault: str, where: str, path: str
) -> None:
    body: dict[str, Any] = {"model": where + fault, "max_tokens": 16}
    if path == "/v1/messages":
        body["messages"] = [{"role": "user", "content": "hi"}]
    else:
        body["input"] = "hi"
    with httpx.Client(base_url=router.url, timeout=60) as http:
        answer = http.post(path, json=body)
    assert answer.status_code == 502, answer.text
    error = answer.json()
    if path == "/v1/messages":
        assert error["type"] == "error"
    assert error["error"]["message"]
