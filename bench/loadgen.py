"""A closed-loop HTTP/1.1 load generator that also times the first chunk of each answer.

``wrk`` measures throughput and latency faster than any Python client, but it cannot see when
the first byte of a streamed answer arrives. This one can: each of ``concurrency`` keep-alive
connections sends the same pre-encoded request, waits for the whole answer and sends the next.
It is a bare asyncio protocol on uvloop (no HTTP client library), run in a process of its own,
and it prints one JSON line: requests/s, latency and time-to-first-chunk percentiles (ms),
errors.

An answer is complete at its ``content-length``, or for chunked encoding at the last-chunk
marker ``0\\r\\n\\r\\n`` (the benchmarks' answers carry no trailers). At the window's end no
new request is sent, and answers still in flight get at most two more windows to finish before
their connections are closed (a slow side's last answers, seconds each, cost the suite more
than a minute a run).

    python -m bench.loadgen URL --body-file F [--concurrency 16] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from urllib.parse import urlsplit

import orjson
import uvloop


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Connection(asyncio.Protocol):
    def __init__(self, request: bytes, run: Run) -> None:
        self._request = request
        self.run = run
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._started = 0.0
        self._first = 0.0
        self._body_at = -1  # index where the body starts, once the head is in
        self._length: int | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def start(self) -> None:
        self._send()

    def _send(self) -> None:
        if time.perf_counter() >= self.run.deadline:
            assert self._transport is not None
            self._transport.close()
            return
        self._buffer.clear()
        self._body_at = -1
        self._length = None
        self._first = 0.0
        self._started = time.perf_counter()
        assert self._transport is not None
        self._transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        self._buffer += data
        if self._body_at < 0:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            self._body_at = end + 4
            head = bytes(self._buffer[:end]).lower()
            if not head.startswith(b"http/1.1 200"):
                self.run.errors += 1
            marker = head.find(b"content-length:")
            if marker >= 0:
                line_end = head.find(b"\r\n", marker)
                self._length = int(head[marker + 15 : line_end if line_end > 0 else len(head)])
        if not self._first and len(self._buffer) > self._body_at:
            self._first = now
        if self._length is not None:
            complete = len(self._buffer) - self._body_at >= self._length
        else:
            complete = self._buffer.endswith(b"0\r\n\r\n")
        if complete:
            self.run.record(now - self._started, self._first - self._started)
            self._send()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if time.perf_counter() < self.run.deadline:
            self.run.errors += 1
        if not self.closed.done():
            self.closed.set_result(None)


class Run:
    def __init__(self, seconds: float, warmup: float) -> None:
        self.started = time.perf_counter()
        self.measure_from = self.started + warmup
        self.deadline = self.measure_from + seconds
        self.latencies: list[float] = []
        self.firsts: list[float] = []
        self.errors = 0
        self.answered = 0  # warm-up and drain included: what the server did in all

    def record(self, latency: float, first: float) -> None:
        self.answered += 1
        if time.perf_counter() >= self.measure_from:
            self.latencies.append(latency)
            self.firsts.append(first)


async def load(
    url: str, body: bytes, concurrency: int, seconds: float, warmup: float, headers: list[str]
) -> dict[str, float]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    extra = "".join(f"{h}\r\n" for h in headers)
    request = (
        f"POST {parts.path or '/'} HTTP/1.1\r\nhost: {host}:{port}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body
    loop = asyncio.get_running_loop()
    connections = []
    run = Run(seconds, warmup)
    for _ in range(concurrency):
        _, protocol = await loop.create_connection(lambda: Connection(request, run), host, port)
        connections.append(protocol)
    # Every connection is open (and, after a round trip, accepted) before the first request:
    # a burst of connects can cost some of them a retransmitted handshake (1 s, 3 s), which
    # would be measured as request latency.
    await asyncio.sleep(0.2)
    run = Run(seconds, warmup)
    for connection in connections:
        connection.run = run
        connection.start()
    await asyncio.sleep(run.deadline - time.perf_counter())
    await asyncio.wait([c.closed for c in connections], timeout=2 * seconds)
    elapsed = time.perf_counter() - run.measure_from
    for connection in connections:
        connection.close()
    await asyncio.gather(*(c.closed for c in connections))
    return {
        "requests": len(run.latencies),
        "answered": run.answered,
        "rps": len(run.latencies) / elapsed,
        "p50_ms": percentile(run.latencies, 0.5) * 1000,
        "p99_ms": percentile(run.latencies, 0.99) * 1000,
        "ttfc_p50_ms": percentile(run.firsts, 0.5) * 1000,
        "ttfc_p99_ms": percentile(run.firsts, 0.99) * 1000,
        "errors": run.errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--body-file", required=True)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--header", action="append", default=[], help="'name: value'")
    args = parser.parse_args()
    with open(args.body_file, "rb") as file:
        body = file.read()
    result = uvloop.run(
        load(args.url, body, args.concurrency, args.seconds, args.warmup, args.header)
    )
    print(orjson.dumps(result).decode(), flush=True)


if __name__ == "__main__":
    main()
