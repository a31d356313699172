"""A fake node as fast as Python can answer: the upstream of the router benchmarks.

It speaks just enough of the node's wire format for a router to register it and forward to
it: ``POST /v1/chat/completions`` answers a fixed chat completion, or with ``"stream": true``
an SSE stream of 32 content chunks (chunked transfer encoding, one write per event, as
llama.cpp sends them); ``GET /health`` answers ok. It is a bare asyncio protocol on uvloop,
with no framework, so that "direct" is the fastest thing here and every proxy is measured
against it.

With ``--router`` it registers one node, or ``--nodes N`` nodes with distinct names and base
URLs (127.0.0.x addresses, all served by this one process), and heartbeats each every
``--interval`` seconds, spread evenly. It prints one line: ``listening <port>``.

    python -m bench.upstream [--port 0] [--router URL --token T] [--nodes 1] [--interval 10]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import uvloop

MODEL = "fake-model"
STREAM_CHUNKS = 32

_WHOLE = orjson.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1763800000,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": "The quick brown fox jumps."},
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 6, "total_tokens": 15},
    }
)
# Answers begin with the status line; the request's ids (echoed as a node echoes them, and
# as a router checks) and the rest of the head follow.
_OK_LINE = b"HTTP/1.1 200 OK\r\n"
_WHOLE_REST = (
    b"content-type: application/json\r\ncontent-length: "
    + str(len(_WHOLE)).encode() + b"\r\n\r\n" + _WHOLE
)  # fmt: skip
_ECHOED = (b"\r\nx-request-id:", b"\r\nx-llmlb-exchange:")


def _event(delta: dict[str, Any], finish: str | None = None) -> bytes:
    chunk = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1763800000,
        "model": MODEL,
        "choices": [{"index": 0, "finish_reason": finish, "delta": delta}],
    }
    data = b"data: " + orjson.dumps(chunk) + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


_STREAM_REST = b"content-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
_STREAM_EVENTS = (
    [_event({"role": "assistant", "content": ""})]
    + [_event({"content": f" tok{index}"}) for index in range(STREAM_CHUNKS)]
    + [_event({}, "stop"), b"e\r\ndata: [DONE]\n\n\r\n", b"0\r\n\r\n"]
)
_HEALTH = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 15\r\n\r\n"
    b'{"status":"ok"}'
)
_NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"


class FastNode(asyncio.Protocol):
    """One keep-alive connection: requests are parsed from the buffer as they complete."""

    def __init__(self) -> None:
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self._buffer[:end]
            length = 0
            marker = head.lower().find(b"content-length:")
            if marker >= 0:
                line_end = head.find(b"\r\n", marker)
                length = int(head[marker + 15 : line_end if line_end > 0 else len(head)])
            if len(self._buffer) < end + 4 + length:
                return
            body = self._buffer[end + 4 : end + 4 + length]
            self._buffer = self._buffer[end + 4 + length :]
            self._answer(head, body)

    def _answer(self, head: bytes, body: bytes) -> None:
        transport = self._transport
        assert transport is not None
        if head.startswith(b"POST /v1/chat/completions"):
            echoed = _echoed(head)
            if b'"stream":true' in body.replace(b" ", b""):
                transport.write(_OK_LINE + echoed + _STREAM_REST)
                for event in _STREAM_EVENTS:
                    transport.write(event)
            else:
                transport.write(_OK_LINE + echoed + _WHOLE_REST)
        elif head.startswith(b"GET /health"):
            transport.write(_HEALTH)
        else:
            transport.write(_NOT_FOUND)


def _echoed(head: bytes) -> bytes:
    """The request's id header lines, to echo (the router writes their names in lower case)."""
    lines = b""
    for name in _ECHOED:
        start = head.find(name)
        if start >= 0:
            end = head.find(b"\r\n", start + 2)
            lines += head[start + 2 : end if end > 0 else len(head)] + b"\r\n"
    return lines


class _Link:
    """One simulated node's connection to the router, kept open between calls as a real
    node's HTTP client keeps it (a connection per heartbeat would measure TCP setup)."""

    def __init__(self, router: str, token: str) -> None:
        address = urlsplit(router)
        self._host, self._port = address.hostname or "127.0.0.1", address.port or 80
        self._token = token
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        body = orjson.dumps(payload)
        head = (f"POST {path} HTTP/1.1\r\nhost: {self._host}:{self._port}\r\n"
                f"authorization: Bearer {self._token}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\n\r\n").encode()  # fmt: skip
        for attempt in (1, 2):  # the router may have closed an idle connection: once more
            if self._writer is None or self._writer.is_closing():
                self._reader, self._writer = await asyncio.open_connection(self._host, self._port)
            assert self._reader is not None
            self._writer.write(head + body)
            try:
                status, data = await self._answer(self._reader)
            except (ConnectionError, asyncio.IncompleteReadError):
                self._writer.close()
                self._writer = None
                if attempt == 2:
                    raise
                continue
            if status >= 400:
                raise OSError(f"{status}: {data[:200]!r}")
            result: dict[str, Any] = orjson.loads(data)
            return result
        raise AssertionError("unreachable")

    @staticmethod
    async def _answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
        line = await reader.readline()
        if not line:
            raise ConnectionError("closed")
        length = 0
        while (header := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = header.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return int(line.split()[1]), await reader.readexactly(length)


def node_load(slots: int) -> dict[str, Any]:
    return {"state": "ready", "models_loaded": [MODEL], "models_on_disk": [MODEL],
            "slots_total": slots}  # fmt: skip


def registration(name: str, base_url: str, slots: int) -> dict[str, Any]:
    return {
        "name": name, "base_url": base_url, "version": "bench",
        "devices": [{"kind": "cuda", "name": "Bench GPU", "memory_total": 80 << 30,
                     "memory_free": 80 << 30}],
        "load": node_load(slots),
    }  # fmt: skip


def node_url(index: int, port: int) -> str:
    """Distinct loopback addresses (127.0.x.y) for the simulated nodes, one port for all."""
    return f"http://127.0.{index // 250}.{index % 250 + 1}:{port}"


async def _join(args: argparse.Namespace, port: int) -> None:
    """Register ``args.nodes`` nodes (16 at a time), then heartbeat each every interval."""
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(16)
    links = [_Link(args.router, args.token) for _ in range(args.nodes)]

    async def register(index: int) -> str:
        payload = registration(f"bench-{index:05d}", node_url(index, port), args.slots)
        async with gate:
            for attempt in range(5):  # a busy router may time one out: the node tries again
                try:
                    answer = await links[index].post("/api/nodes", payload)
                    return str(answer["node_id"])
                except OSError as exc:
                    print(f"registering node {index} failed ({exc}); again", file=sys.stderr)
                    await asyncio.sleep(0.5 * (attempt + 1))
        raise RuntimeError(f"node {index} could not register")

    started = time.monotonic()
    ids = await asyncio.gather(*(register(i) for i in range(args.nodes)))
    print(f"registered {args.nodes} in {time.monotonic() - started:.3f} s", flush=True)
    # Heartbeats go out in ticks of 0.1 s, each node once per interval on its own connection,
    # those of a tick at once: a fleet of 10,000 sends 1,000 a second.
    beats = 0
    tick = 0.1
    credit = 0.0  # heartbeats due and not yet sent
    position = 0
    while True:
        started = time.monotonic()
        credit += args.nodes * tick / args.interval
        due = [(position + k) % len(ids) for k in range(int(credit))]
        credit -= len(due)
        position = (position + len(due)) % len(ids)
        await asyncio.gather(*(
            links[i].post(f"/api/nodes/{ids[i]}/heartbeat", node_load(args.slots)) for i in due
        ), return_exceptions=True)  # fmt: skip  # a lost heartbeat is a heartbeat missed
        beats += len(due)
        if args.count_file and due:
            await loop.run_in_executor(None, Path(args.count_file).write_text, str(beats))
        await asyncio.sleep(max(0.0, tick - (time.monotonic() - started)))


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(FastNode, "0.0.0.0" if args.nodes > 1 else "127.0.0.1",
                                      args.port, backlog=4096)  # fmt: skip
    port = server.sockets[0].getsockname()[1]
    print("listening", port, flush=True)
    if args.router:
        await _join(args, port)
    await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--router", default="")
    parser.add_argument("--token", default="")
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--interval", type=float, default=10.0, help="heartbeat seconds")
    parser.add_argument("--slots", type=int, default=1000, help="slots each node reports")
    parser.add_argument("--count-file", default="", help="where to keep the heartbeats sent")
    args = parser.parse_args()
    try:
        uvloop.run(serve(args))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
