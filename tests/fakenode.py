"""A scriptable fake node for faults a real node cannot produce on demand.

It speaks the node's wire format (OpenAI JSON and SSE chunks as llama.cpp emits them),
registers with a router as a GPU node and heartbeats, and does what the test sets in
``behaviour``: answer after a delay, answer 5xx, or drop a stream after some chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import uvicorn
import uvloop
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from llmlb.common.asgi import EXCEPTION_HANDLERS, RequestIdMiddleware
from llmlb.common.departure import until_disconnected
from llmlb.common.errors import ClientClosedRequest
from llmlb.common.serving import bind, url_of


@dataclass
class Behaviour:
    delay: float = 0.0  # seconds before the answer starts
    status: int = 200  # non-200: answer this status with an OpenAI error body
    chunks: int = 5  # content chunks in a stream
    chunk_delay: float = 0.01
    drop_after: int | None = None  # close the connection after this many stream chunks
    crash: bool = False  # raise inside the app: uvicorn answers 500 and drops the connection
    padding: int = 0  # bytes of filler in a whole answer (a huge answer)
    logs: bytes = b'{"data":[{"ts":0,"level":"info","logger":"fake","msg":"fake line"}]}'


@dataclass
class Member:
    """What every fake node does as a member of a fleet: register with a router as a GPU
    node, heartbeat its load, register again when forgotten."""

    name: str
    model: str = "fake-model"
    url: str = ""
    node_id: str | None = None
    in_flight: int = 0  # requests in its hands now (heartbeats report it, as a node does)
    peak_in_flight: int = 0  # the most it has held at once
    heartbeats: int = 0  # heartbeats the router answered 200
    _stop_heartbeats: threading.Event = field(default_factory=threading.Event)

    def load(self) -> dict[str, Any]:
        return {"state": "ready", "models_loaded": [self.model], "models_on_disk": [self.model],
                "slots_total": 4, "requests_in_flight": self.in_flight}  # fmt: skip

    def join(
        self, router_url: str, token: str, interval: float = 0.5, base_url: str | None = None
    ) -> None:
        """Register with the router (reachable at ``base_url``, default its own) and heartbeat
        from a thread until stopped."""
        headers = {"authorization": f"Bearer {token}"}
        registration = {
            "name": self.name, "base_url": base_url or self.url, "version": "fake",
            "devices": [{"kind": "cuda", "name": "Fake GPU", "memory_total": 8 << 30,
                         "memory_free": 8 << 30}],
            "load": self.load(),
        }  # fmt: skip
        answer = httpx.post(router_url + "/api/nodes", json=registration, headers=headers)
        answer.raise_for_status()
        self.node_id = answer.json()["node_id"]

        def beat() -> None:
            while not self._stop_heartbeats.wait(interval):
                try:  # a router that restarts is away for a moment, as for a real node
                    answer = httpx.post(
                        f"{router_url}/api/nodes/{self.node_id}/heartbeat",
                        json=self.load(), headers=headers,
                    )  # fmt: skip
                    self.heartbeats += answer.status_code == 200
                    if answer.status_code == 404:  # forgotten: register again
                        again = httpx.post(router_url + "/api/nodes", json=registration,
                                           headers=headers)  # fmt: skip
                        self.node_id = again.json()["node_id"]
                except httpx.HTTPError:
                    continue

        threading.Thread(target=beat, daemon=True).start()

    def stop_heartbeats(self) -> None:
        self._stop_heartbeats.set()


@dataclass
class FakeNode(Member):
    behaviour: Behaviour = field(default_factory=Behaviour)
    requests: int = 0
    last_headers: dict[str, str] = field(default_factory=dict)
    streams_cancelled: int = 0
    requests_abandoned: int = 0  # whole answers whose client left while it was delayed
    logs_query: dict[str, str] = field(default_factory=dict)  # what GET /api/logs was asked
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None

    def _completion(self, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", self.model),
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": f"hello from {self.name}"},
                }
            ],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
        }

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        chunk = {
            "choices": [{"finish_reason": finish, "index": 0, "delta": delta}],
            "created": int(time.time()),
            "id": "chatcmpl-fake",
            "model": self.model,
            "object": "chat.completion.chunk",
        }
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    async def _chat(self, request: Request) -> Response:
        self.requests += 1
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            return await self._answer(request)
        finally:
            self.in_flight -= 1

    async def _answer(self, request: Request) -> Response:
        self.last_headers = dict(request.headers)
        body = orjson.loads(await request.body())
        behaviour = self.behaviour
        try:  # like the node: a client that leaves cancels the work
            await until_disconnected(request, asyncio.sleep(behaviour.delay))
        except ClientClosedRequest:
            self.requests_abandoned += 1
            raise
        if behaviour.crash:
            raise RuntimeError("fake node crashes on purpose")
        if behaviour.status != 200:
            error = {"error": {"message": f"{self.name} failed on purpose", "type": "server_error",
                               "param": None, "code": None}}  # fmt: skip
            return Response(orjson.dumps(error), behaviour.status, media_type="application/json")
        if not body.get("stream"):
            answer = self._completion(body)
            if behaviour.padding:
                answer["padding"] = "x" * behaviour.padding
            return Response(orjson.dumps(answer), media_type="application/json")

        async def frames() -> Any:
            finished = False
            try:
                yield self._chunk({"role": "assistant", "content": None})
                for index in range(behaviour.chunks):
                    if behaviour.drop_after is not None and index >= behaviour.drop_after:
                        raise ConnectionResetError("fake node drops the stream")
                    await asyncio.sleep(behaviour.chunk_delay)
                    yield self._chunk({"content": f"tok{index} "})
                yield self._chunk({}, "stop")
                yield b"data: [DONE]\n\n"
                finished = True
            finally:
                if not finished and behaviour.drop_after is None:
                    self.streams_cancelled += 1

        return StreamingResponse(frames(), media_type="text/event-stream")

    async def _logs(self, request: Request) -> Response:
        self.logs_query = dict(request.query_params)
        return Response(self.behaviour.logs, media_type="application/json")

    async def _health(self, request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    def start(self, port: int = 0) -> FakeNode:
        # The node's own exception handlers: Starlette sends their 500 and then re-raises,
        # and uvicorn drops the connection without a "Connection: close" (a stale pooled
        # connection for the router).
        app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/health", self._health, methods=["GET"]),
                Route("/api/logs", self._logs, methods=["GET"]),
            ],
            middleware=[Middleware(RequestIdMiddleware)],  # as the node: ids echoed
            exception_handlers=EXCEPTION_HANDLERS,
        )
        sock = bind("127.0.0.1", port)
        self.url = url_of(sock)
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        server = self._server

        def run() -> None:
            # uvloop, like the real node: the default loop's transports leave Nagle on for
            # sockets handed in, which adds ~40 ms (delayed ACK) to every keep-alive request.
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(server.serve(sockets=[sock]))

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        while not server.started:
            time.sleep(0.01)
        return self

    def serve_again(self) -> None:
        """Serve on the same address again (a node process that came back)."""
        self.start(int(self.url.rsplit(":", 1)[1]))

    def stop_serving(self) -> None:
        """Close the HTTP server but keep heartbeating: a node that died behind its agent."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(5)

    def stop(self) -> None:
        self._stop_heartbeats.set()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(5)


@dataclass(frozen=True)
class RawRequest:
    """One request as a raw node read it."""

    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)

    def echoed(self) -> bytes:
        """The header lines that echo the request's ids, as a node writes them."""
        return b"".join(
            f"{name}: {self.headers[name]}\r\n".encode("latin-1")
            for name in ("x-request-id", "x-llmlb-exchange") if name in self.headers
        )  # fmt: skip


# A raw node's handler: it writes what it likes for one request; True keeps the connection.
RawHandler = Callable[[RawRequest, asyncio.StreamWriter], Awaitable[bool]]


def whole_answer(request: RawRequest, content: str, status: int = 200) -> bytes:
    """A chat completion as the node sends it, its ids echoed."""
    body = orjson.dumps({
        "id": "chatcmpl-raw", "object": "chat.completion", "created": 0, "model": "fake-model",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
    })  # fmt: skip
    head = b"HTTP/1.1 %d OK\r\ncontent-type: application/json\r\n" % status
    return head + request.echoed() + b"content-length: %d\r\n\r\n%s" % (len(body), body)


def stream_answer(request: RawRequest, contents: list[str]) -> bytes:
    """A chunked SSE chat stream, its ids echoed, ending with [DONE]."""
    events = [
        b"data: " + orjson.dumps({
            "id": "chatcmpl-raw", "object": "chat.completion.chunk", "created": 0,
            "model": "fake-model",
            "choices": [{"index": 0, "finish_reason": None, "delta": {"content": text}}],
        }) + b"\n\n"
        for text in contents
    ] + [b"data: [DONE]\n\n"]  # fmt: skip
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(event), event) for event in events)
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n%s"
        b"transfer-encoding: chunked\r\n\r\n%s0\r\n\r\n" % (request.echoed(), chunked)
    )


@dataclass
class RawNode(Member):
    """A node that writes whatever bytes its handler does: for faults of the wire itself
    (answers for the wrong request, endless headers, statuses HTTP lacks), which a real HTTP
    server will not produce. ``GET /health`` answers ok; every other request goes to
    ``handler``."""

    handler: RawHandler | None = None
    requests: int = 0
    connections: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _server: asyncio.Server | None = None

    def start(self) -> RawNode:
        started = threading.Event()

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
            self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
            started.set()
            async with self._server:
                with contextlib.suppress(asyncio.CancelledError):
                    await self._server.serve_forever()

        def run() -> None:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(main())

        threading.Thread(target=run, daemon=True).start()
        started.wait(10)
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while request := await _read_request(reader):
                if request.path == "/health":
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n%s"
                        b'content-length: 15\r\n\r\n{"status":"ok"}' % request.echoed()
                    )
                    continue
                self.requests += 1
                assert self.handler is not None
                if not await self.handler(request, writer):
                    break
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def stop(self) -> None:
        self._stop_heartbeats.set()
        if self._loop is not None and self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)


async def _read_request(reader: asyncio.StreamReader) -> RawRequest | None:
    """The next request on a connection (Content-Length bodies), None at its end."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    start, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        if name:
            headers[name.strip().lower()] = value.strip()
    method, path, _ = start.split(" ", 2)
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return RawRequest(method, path, headers, body)
