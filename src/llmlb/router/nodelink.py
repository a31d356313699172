"""HTTP/1.1 from the router to its nodes: the hot path's own client.

Every proxied request crosses this hop, and at 64 concurrent streams aiohttp's client was the
router's largest cost (about 30% of its event loop: request setup, a cookie jar and tracing
hooks nobody uses here, and bookkeeping per chunk). The hop needs little of it: one method
(POST), a JSON body the router already holds as bytes, answers framed by Content-Length or
chunked encoding, keep-alive, TLS. So this is a pool of ``asyncio.Protocol`` connections
that parse with httptools (llhttp, as uvicorn does on the server side). aiohttp stays for
everything else (model downloads, probes, the clouds).

Failures are ``NodeLinkError``s: ``NodeUnreachable`` when no connection could be made (the
node is down), ``NodeHungUp`` when a connection broke (often a pooled one the node had
already closed: worth one more try on a new connection), ``NodeBadAnswer`` for bytes that
are not HTTP. An answer that stalls for ``read_timeout`` seconds raises ``TimeoutError``.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools

# A reader that falls this far behind (a slow client at the far end) stops the node's socket
# being read, so that a stream never piles up in the router's memory.
_HIGH_WATER = 64 * 1024
# Idle connections are given up before a node's own keep-alive (30 s by default) closes them,
# so that a reused connection is seldom one the node is closing at that moment.
KEEPALIVE_SECONDS = 15.0
# Idle connections kept per node: enough for the concurrency a node takes, bounded.
MAX_IDLE_PER_NODE = 512
# The most header bytes an answer may carry (llhttp itself sets no bound).
MAX_HEAD_BYTES = 64 * 1024


class NodeLinkError(ConnectionError):
    """The node could not be reached or broke the exchange."""


class NodeUnreachable(NodeLinkError):
    """No connection could be made: refused, no route, name unknown, TLS refused, timed out."""


class NodeHungUp(NodeLinkError):
    """The connection closed (or failed) before the answer was complete."""


class NodeBadAnswer(NodeLinkError):
    """What came back was not a well-formed HTTP/1.1 answer."""


@dataclass(frozen=True)
class _Origin:
    host: str
    port: int
    tls: bool
    host_header: bytes


def _origin(base_url: str) -> _Origin:
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise NodeUnreachable(f"not an http(s) URL: {base_url!r}")
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    return _Origin(parts.hostname, port, tls, parts.netloc.encode("ascii"))


class NodeResponse:
    """A node's answer: its status and headers at once, its body as it arrives.

    Whoever gets one must end it: ``release()`` after reading to the end (the connection goes
    back to the pool), ``close()`` otherwise (the connection is dropped, which is how a node
    learns that nobody wants the rest).
    """

    __slots__ = ("_connection", "headers", "status")

    def __init__(self, connection: _Connection, status: int, headers: dict[str, str]) -> None:
        self._connection = connection
        self.status = status
        self.headers = headers  # names in lower case

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("content-length")
        return int(value) if value is not None and value.isdigit() else None

    def at_eof(self) -> bool:
        """Everything the node sent has been read."""
        return self._connection.body_read()

    async def read_some(self) -> bytes:
        """What has arrived since the last call (waiting for something); b"" at the end."""
        return await self._connection.read_some()

    def release(self) -> None:
        self._connection.finish(reuse=True)

    def close(self) -> None:
        self._connection.finish(reuse=False)


class _Connection(asyncio.Protocol):
    """One keep-alive connection to a node, carrying one exchange at a time."""

    def __init__(self, pool: NodeLinks, origin: _Origin) -> None:
        self._pool = pool
        self._origin = origin
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.lost = False
        self._reset()
        self.idle_since = 0.0
        self._last_data = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def _reset(self) -> None:
        self._header_list: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._interim = False  # a 1xx answer is being read: the real one follows
        self._head: asyncio.Future[NodeResponse] | None = None
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._complete = False
        self._framed = False  # Content-Length or chunked: the end is known without EOF
        self._keep_alive = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self.lost:
            self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._last_data = self._loop.time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(NodeBadAnswer("the node asked to switch protocols"))
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            self._fail(cause if isinstance(cause, NodeBadAnswer) else NodeBadAnswer(str(exc)))
        except httptools.HttpParserError as exc:
            self._fail(NodeBadAnswer(f"the node's answer is not HTTP/1.1: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._transport = None
        self._pool.forget(self)
        if self._head is None and self._waiter is None and not self._chunks:
            return  # idle, or the exchange already ended
        if self._head is not None and self._head.done() and not self._framed:
            self._complete = True  # an answer that ends where the connection does
            self._wake()
            return
        if not self._complete:
            reason = f": {exc}" if exc else ""
            self._fail(NodeHungUp(f"the node closed the connection{reason}"))

    def pause_writing(self) -> None:  # bodies are small and written at once
        pass

    # -- httptools callbacks ---------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value)
        if self._head_bytes > MAX_HEAD_BYTES:
            raise NodeBadAnswer(f"the node's headers are over {MAX_HEAD_BYTES} bytes")
        self._header_list.append((name, value))

    def on_headers_complete(self) -> None:
        headers = {n.decode("latin-1").lower(): v.decode("latin-1") for n, v in self._header_list}
        if "content-length" in headers or "chunked" in headers.get("transfer-encoding", ""):
            self._framed = True
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            self._interim = True
            self._header_list = []
            return
        if self._head is not None and not self._head.done():
            self._head.set_result(NodeResponse(self, status, headers))

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        # Asked now: once this callback returns, the parser resets for the next message.
        self._keep_alive = self._parser.should_keep_alive()
        self._complete = True
        self._wake()

    # -- the exchange ----------------------------------------------------------------------

    async def exchange(self, head: bytes, body: bytes) -> NodeResponse:
        """Send one request; its answer once the status line and headers have come."""
        if self._transport is None:  # closed by the node before the first request
            raise NodeHungUp("the node closed the connection")
        self._reset()
        self._head = self._loop.create_future()
        self._last_data = self._loop.time()
        self._transport.write(head + body if len(body) < 16384 else head)
        if len(body) >= 16384:
            self._transport.write(body)
        return await self._head

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        if self._error is not None:
            return  # the first failure is the one to report (a close follows every one)
        self._error = error
        if self._head is not None and not self._head.done():
            self._head.set_exception(error)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        if self._transport is not None:
            self._transport.close()

    def body_read(self) -> bool:
        return self._complete and not self._chunks

    async def read_some(self) -> bytes:
        while not self._chunks:
            if self._complete:
                return b""
            if self._error is not None:
                raise self._error
            self._waiter = self._loop.create_future()
            self._watch_idle()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = self._chunks.popleft() if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        return data

    def _watch_idle(self) -> None:
        """Fail a wait that gets no bytes for ``read_timeout``: one timer, moved only when it
        fires (not re-armed on every chunk)."""
        if self._timer is None:
            deadline = self._last_data + self._pool.read_timeout
            self._timer = self._loop.call_at(deadline, self._check_idle)

    def _check_idle(self) -> None:
        self._timer = None
        if self._waiter is None or self._waiter.done():
            return
        deadline = self._last_data + self._pool.read_timeout
        if self._loop.time() >= deadline:
            seconds = self._pool.read_timeout
            self._fail(TimeoutError(f"the node sent nothing for {seconds:.0f} s"))
        else:
            self._timer = self._loop.call_at(deadline, self._check_idle)

    def finish(self, reuse: bool) -> None:
        """End the exchange: back to the pool when the answer was read whole and the node
        keeps the connection open; closed otherwise."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        complete = self._complete and not self._chunks and self._error is None
        keep = reuse and complete and self._framed and self._keep_alive
        self._head = None
        self._chunks.clear()
        if keep and not self.lost:
            self._pool.put_back(self)
        else:
            self.abort()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None


class NodeLinks:
    """Keep-alive connections to every node, one exchange at a time on each."""

    def __init__(
        self, tls: ssl.SSLContext | None, connect_timeout: float, read_timeout: float
    ) -> None:
        self._tls = tls
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._origins: dict[str, _Origin] = {}
        self._idle: dict[_Origin, list[_Connection]] = {}
        self._closed = False

    async def post(
        self, base_url: str, path: str, headers: dict[str, str], body: bytes, fresh: bool = False
    ) -> NodeResponse:
        """POST ``body``; the answer once its headers have come. ``fresh``: on a new
        connection, not a pooled one. ``headers`` must be free of CR and LF."""
        origin = self._origins.get(base_url)
        if origin is None:
            origin = self._origins[base_url] = _origin(base_url)
        head = self._head(origin, path, headers, len(body))
        connection = None if fresh else self._take_idle(origin)
        if connection is None:
            connection = await self._connect(origin)
        try:
            return await connection.exchange(head, body)
        except BaseException:
            connection.abort()
            raise

    @staticmethod
    def _head(origin: _Origin, path: str, headers: dict[str, str], length: int) -> bytes:
        lines = [f"{name}: {value}\r\n" for name, value in headers.items()]
        return (
            b"POST " + path.encode("ascii") + b" HTTP/1.1\r\nHost: " + origin.host_header
            + b"\r\n" + "".join(lines).encode("latin-1")
            + b"content-length: " + str(length).encode("ascii") + b"\r\n\r\n"
        )  # fmt: skip

    def _take_idle(self, origin: _Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        stale_before = time.monotonic() - KEEPALIVE_SECONDS
        while idle:
            connection = idle.pop()  # the most recently used: the least likely to be stale
            if not connection.lost and connection.idle_since > stale_before:
                return connection
            connection.abort()
        return None

    async def _connect(self, origin: _Origin) -> _Connection:
        loop = asyncio.get_running_loop()
        tls = None
        if origin.tls:
            tls = self._tls = self._tls or ssl.create_default_context()
        try:
            async with asyncio.timeout(self.connect_timeout):
                transport, connection = await loop.create_connection(
                    lambda: _Connection(self, origin), origin.host, origin.port, ssl=tls
                )
        except TimeoutError as exc:
            raise NodeUnreachable(
                f"no connection to {origin.host}:{origin.port} within {self.connect_timeout:.0f} s"
            ) from exc
        except OSError as exc:  # refused, unreachable, unknown name, TLS refused
            raise NodeUnreachable(f"cannot connect to {origin.host}:{origin.port}: {exc}") from exc
        connection.connection_made(transport)  # uvloop calls it only on its next turn
        return connection

    def put_back(self, connection: _Connection) -> None:
        idle = self._idle.setdefault(connection._origin, [])
        if self._closed or len(idle) >= MAX_IDLE_PER_NODE:
            connection.abort()
            return
        connection.idle_since = time.monotonic()
        idle.append(connection)

    def forget(self, connection: _Connection) -> None:
        """A connection closed: no longer one to reuse."""
        idle = self._idle.get(connection._origin)
        if idle and connection in idle:
            idle.remove(connection)

    async def close(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for connection in idle:
                connection.abort()
        self._idle.clear()
