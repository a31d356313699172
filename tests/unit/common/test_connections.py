"""The server's connections (common.connections, on uvicorn and uvloop as served) leave no
garbage cycles behind when they close, nor do the streams relayed on them: a cycle per
connection kept each closed connection's objects until a full collection, which
serving.GC_THRESHOLDS makes rare, so a router's memory grew with every connection its
clients opened (20 MiB for 2,000 connections) and with every stream it relayed."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncGenerator

import uvloop
from starlette.types import Receive, Scope, Send

from llmlb.common.asgi import LastChunk, StreamRelay
from llmlb.common.departure import DEPARTURE_KEY, Departure
from llmlb.common.serving import bind, make_server
from llmlb.common.settings import CommonSettings

CONNECTIONS = 20


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """A whole answer at /whole; at /stream, a relayed stream watched as the router's are."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await receive()  # the (empty) body
    if scope["path"] == "/whole":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"2")]})  # fmt: skip
        await send({"type": "http.response.body", "body": b"ok"})
        return

    async def chunks() -> AsyncGenerator[bytes, None]:
        yield b"data: 1\n\n"
        yield LastChunk(b"data: [DONE]\n\n")

    departure = scope[DEPARTURE_KEY] = Departure(receive, scope)
    try:
        await StreamRelay(chunks(), 200, "text/event-stream", {})(scope, receive, send)
    finally:
        departure.close()


async def visit(port: int) -> bytes:
    """One connection: a whole answer, then a stream on the same connection, then closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /whole HTTP/1.1\r\nhost: x\r\n\r\n")
    whole = await reader.readuntil(b"\r\n\r\n") + await reader.readexactly(2)
    writer.write(b"GET /stream HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    stream = await reader.read()  # to the server's close
    writer.close()
    await writer.wait_closed()
    return whole + stream


async def closed_connections_are_freed() -> tuple[list[bytes], int]:
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = make_server(app, CommonSettings())
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:  # noqa: ASYNC110 (uvicorn has no event)
            await asyncio.sleep(0.01)
        for _ in range(3):  # warm up what asyncio, uvloop and the loggers cache
            await visit(port)
        gc.collect()
        gc.disable()
        try:
            answers = [await visit(port) for _ in range(CONNECTIONS)]
            while server.server_state.connections:  # noqa: ASYNC110 (no event for it either)
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)  # what the closes scheduled has run
            return answers, gc.collect()
        finally:
            gc.enable()
    finally:
        server.should_exit = True
        await serving


def test_closed_connections_and_their_streams_leave_no_garbage_cycles() -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        answers, cyclic = runner.run(closed_connections_are_freed())
    assert all(a.startswith(b"HTTP/1.1 200") and b"okHTTP/1.1 200" in a
               and a.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n") for a in answers)  # fmt: skip
    assert cyclic == 0
