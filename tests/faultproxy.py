"""A TCP proxy that makes a link bad on demand, for the network-fault tests (tests/network).

This kernel has no netem queueing discipline, so a slow or lossy link is made here: every
byte between a client and ``target`` passes through this proxy, which can, while a test runs,
- add ``latency`` (seconds, each way; delivery stays pipelined, as on a long cable),
- lose a ``loss`` share of segments, as TCP sees loss: the segment arrives a retransmission
  timeout (``retransmit``, 200 ms, TCP's minimum on Linux) late, and all behind it with it,
- cap each direction's ``bandwidth`` (bytes per second),
- go ``half_open``: nothing more is delivered either way and nothing is closed (a peer that
  vanished without a FIN or RST).
It runs on its own event loop in a daemon thread; the settings are plain attributes.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import threading
import time


class FaultProxy:
    def __init__(self, listen_host: str, target: tuple[str, int]) -> None:
        self.target = target
        self.latency = 0.0
        self.loss = 0.0
        self.retransmit = 0.2
        self.bandwidth: float | None = None
        self.connections = 0
        self.carried = {"up": 0, "down": 0}  # bytes delivered toward the target, and back
        self._flowing: asyncio.Event | None = None  # cleared while half open
        self._stopping = asyncio.Event()  # (replaced on the proxy's own loop)
        self._sock = socket.create_server((listen_host, 0))
        self.address = self._sock.getsockname()[:2]
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    @property
    def half_open(self) -> bool:
        return self._flowing is not None and not self._flowing.is_set()

    @half_open.setter
    def half_open(self, value: bool) -> None:
        flowing = self._flowing
        assert flowing is not None
        self._loop.call_soon_threadsafe(flowing.clear if value else flowing.set)

    @property
    def url(self) -> str:
        return f"http://{self.address[0]}:{self.address[1]}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def serve() -> None:
            self._flowing = asyncio.Event()
            self._flowing.set()
            self._stopping = asyncio.Event()
            server = await asyncio.start_server(self._accepted, sock=self._sock)
            self._ready.set()
            await self._stopping.wait()
            server.close()
            pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

        self._loop.run_until_complete(serve())
        self._loop.close()

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        both = (self._pipe(reader, upstream_writer, "up"),
                self._pipe(upstream_reader, writer, "down"))  # fmt: skip
        await asyncio.gather(*both, return_exceptions=True)
        for w in (writer, upstream_writer):
            w.close()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str
    ) -> None:
        """Read as it comes; deliver each segment at its time, in order."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            due_floor = 0.0
            while True:
                due, data = await queue.get()
                if not data:
                    with contextlib.suppress(OSError):
                        writer.write_eof()
                    return
                due = max(due, due_floor)  # (a late segment holds up those behind it)
                assert self._flowing is not None
                await self._flowing.wait()
                if (delay := due - time.monotonic()) > 0:
                    await asyncio.sleep(delay)
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
                self.carried[direction] += len(data)
                rate = self.bandwidth
                due_floor = time.monotonic() + len(data) / rate if rate else 0.0

        delivering = asyncio.ensure_future(deliver())
        try:
            while True:
                data = await reader.read(16384)
                due = time.monotonic() + self.latency
                if data and self.loss and random.random() < self.loss:
                    due += self.retransmit
                await queue.put((due, data))
                if not data:
                    break
            await delivering
        finally:
            delivering.cancel()

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(10)
