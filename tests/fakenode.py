"""A scriptable fake node for faults a real node cannot produce on demand.

It speaks the node's wire format (OpenAI JSON and SSE chunks as llama.cpp emits them),
registers with a router as a GPU node and heartbeats, and does what the test sets in
``behaviour``: answer after a delay, answer 5xx, or drop a stream after some chunks.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import uvicorn
import uvloop
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from llmlb.common.asgi import EXCEPTION_HANDLERS, until_disconnected
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
class FakeNode:
    name: str
    model: str = "fake-model"
    behaviour: Behaviour = field(default_factory=Behaviour)
    requests: int = 0
    in_flight: int = 0  # requests in its hands now (heartbeats report it, as a node does)
    last_headers: dict[str, str] = field(default_factory=dict)
    streams_cancelled: int = 0
    requests_abandoned: int = 0  # whole answers whose client left while it was delayed
    logs_query: dict[str, str] = field(default_factory=dict)  # what GET /api/logs was asked
    url: str = ""
    node_id: str | None = None
    heartbeats: int = 0  # heartbeats the router answered 200
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None
    _stop_heartbeats: threading.Event = field(default_factory=threading.Event)

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
