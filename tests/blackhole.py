"""A loopback TCP proxy that can black-hole traffic: connections stay open and accepted, and
no byte gets through in either direction, as on a network path that silently drops packets
(the far end neither answers nor closes)."""

from __future__ import annotations

import asyncio
import threading

from tests.support import free_port


class BlackHoleProxy:
    def __init__(self, target_port: int) -> None:
        self._target = target_port
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._flowing: asyncio.Event | None = None  # set: traffic flows (the loop's own)
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> BlackHoleProxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    def swallow(self) -> None:
        """From now on nothing passes, on new connections and on open ones."""
        assert self._flowing is not None
        self._loop.call_soon_threadsafe(self._flowing.clear)

    def restore(self) -> None:
        assert self._flowing is not None
        self._loop.call_soon_threadsafe(self._flowing.set)

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._flowing = asyncio.Event()
        self._flowing.set()
        server = self._loop.run_until_complete(
            asyncio.start_server(self._connection, "127.0.0.1", self.port)
        )
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._passable()
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self._target)
        await asyncio.gather(
            self._pump(reader, upstream_writer), self._pump(upstream_reader, writer),
            return_exceptions=True,
        )  # fmt: skip
        for end in (writer, upstream_writer):
            end.close()

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        while data := await source.read(65536):
            await self._passable()  # swallowed: held here, never delivered, never closed
            sink.write(data)
            await sink.drain()
        sink.write_eof()

    async def _passable(self) -> None:
        assert self._flowing is not None
        await self._flowing.wait()
