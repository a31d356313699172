"""One keep-alive HTTP/1.1 connection to a node (an ``asyncio.Protocol`` parsing with
httptools), carrying one exchange at a time, and the answer it hands to the proxy.

The pool that owns these connections is ``router.proxy.nodelink``; the checks that keep an
answer from reaching the wrong request (echoed ids, bytes after an answer's end) are here,
where the bytes arrive.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass
from typing import Protocol, cast
from urllib.parse import quote, urlsplit

import httptools

from llmlb.common.asgi import EXCHANGE_HEADER, REQUEST_ID_HEADER
from llmlb.router.proxy.node_errors import (
    NodeBadAnswer,
    NodeCutOff,
    NodeHungUp,
    NodeLinkError,
    NodeMixedUp,
    NodeUnreachable,
)

# A reader that falls this far behind (a slow client at the far end) stops the node's socket
# being read, so that a stream never piles up in the router's memory.
_HIGH_WATER = 64 * 1024
# The most bytes an answer's head may take, interim answers included: counted as they are
# fed to llhttp, which sets no bound and copies a header line that never ends again and again.
MAX_HEAD_BYTES = 64 * 1024
# Interim (1xx) answers before the real one: a node sends one now and then, not a flood.
MAX_INTERIM_ANSWERS = 8


class ConnectionOwner(Protocol):
    """The pool a connection goes back to (``NodeLinks``)."""

    read_timeout: float

    def forget(self, connection: NodeConnection) -> None: ...

    def done(self, connection: NodeConnection) -> None: ...

    def put_back(self, connection: NodeConnection) -> None: ...


class _Surplus(Exception):
    """Bytes came after the answer's end (it is whole: only the connection is dropped)."""


@dataclass(frozen=True, eq=False)  # one per base URL (the pool's map of them): hashed by identity
class Origin:
    host: str
    port: int
    tls: bool
    host_header: bytes
    prefix: bytes  # the base URL's path (a node behind a gateway at /gpu1), or b""


def origin_of(base_url: str) -> Origin:
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise NodeUnreachable(f"not an http(s) URL: {base_url!r}")
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    prefix = quote(parts.path.rstrip("/"), safe="/%:@!$&'()*+,;=-._~").encode("ascii")
    return Origin(parts.hostname, port, tls, parts.netloc.encode("idna"), prefix)


class NodeResponse:
    """A node's answer: its status and headers at once, its body as it arrives.

    Whoever gets one must end it: ``release()`` after reading to the end (the connection goes
    back to the pool), ``close()`` otherwise (the connection is dropped, which is how a node
    learns that nobody wants the rest).
    """

    __slots__ = ("_connection", "headers", "status")

    def __init__(self, connection: NodeConnection, status: int, headers: dict[str, str]) -> None:
        self._connection = connection
        self.status = status
        self.headers = headers  # names in lower case

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("content-length", "")
        return int(value) if value.isascii() and value.isdigit() else None

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


class NodeConnection(asyncio.Protocol):
    """One keep-alive connection to a node, carrying one exchange at a time."""

    def __init__(self, pool: ConnectionOwner, origin: Origin) -> None:
        self.pool = pool
        self.origin = origin
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.lost = False
        self.idle_since = 0.0
        self._last_data = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._exchanging = False  # a request is out and its answer not yet ended
        self._reset()

    def _reset(self) -> None:
        self._header_list: list[tuple[bytes, bytes]] = []
        self._head_fed = 0  # bytes fed to the parser before the answer's head was whole
        self._head_bytes = 0  # header names and values seen, interim answers' included
        self._interims = 0
        self._interim = False  # a 1xx answer is being read: the real one follows
        # (x-request-id, exchange id) the answer echoes; None: a server that echoes nothing
        self._ids: tuple[str, str] | None = ("", "")
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
        if not self._exchanging:  # bytes nobody asked for: the connection is not to be trusted
            self.abort()
            return
        self._last_data = self._loop.time()
        in_head = self._head is not None and not self._head.done()
        if in_head:
            self._head_fed += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(NodeBadAnswer("the node asked to switch protocols"))
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _Surplus):
                self.abort()
                return
            self._fail(cause if isinstance(cause, NodeBadAnswer) else NodeBadAnswer(str(exc)))
        except httptools.HttpParserError as exc:
            self._fail(NodeBadAnswer(f"the node's answer is not HTTP/1.1: {exc}"))
        # Checked after the feed, which is linear in one read: what a head may cost is bounded
        # by MAX_HEAD_BYTES and one read, however the node spreads it.
        head = self._head
        if in_head and self._head_fed > MAX_HEAD_BYTES and head is not None and not head.done():
            self._fail(NodeBadAnswer(f"the node's headers are over {MAX_HEAD_BYTES} bytes"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._transport = None
        self.pool.forget(self)
        self.pool.done(self)
        if not self._exchanging or self._error is not None:
            return
        began = self._head is not None and self._head.done()
        if began and not self._framed and exc is None:
            self._complete = True  # an answer that ends where the connection does
            self._wake()
        elif not self._complete:
            reason = f": {exc}" if exc else ""
            error = NodeCutOff if began else NodeHungUp
            self._fail(error(f"the node closed the connection{reason}"))

    # -- httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._head is None or self._head.done():  # (a 1xx does not settle _head)
            # Bytes after the answer ended (a second answer, or more than its length said):
            # the answer stands, the connection is not to be trusted with another.
            raise _Surplus

    def on_header(self, name: bytes, value: bytes) -> None:
        # (A head that came in one read is whole before anything else counts its size.)
        self._head_bytes += len(name) + len(value)
        if self._head_bytes > MAX_HEAD_BYTES:
            raise NodeBadAnswer(f"the node's headers are over {MAX_HEAD_BYTES} bytes")
        self._header_list.append((name, value))

    def on_headers_complete(self) -> None:
        headers = {n.decode("latin-1").lower(): v.decode("latin-1") for n, v in self._header_list}
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            self._interims += 1
            if self._interims > MAX_INTERIM_ANSWERS:
                raise NodeBadAnswer(f"the node sent over {MAX_INTERIM_ANSWERS} interim answers")
            self._interim = True
            self._header_list = []
            return
        if status > 599:
            raise NodeBadAnswer(f"the node answered with status {status}, which HTTP lacks")
        if self._ids is not None:
            self._check_ids(headers, self._ids)
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        self._framed = chunked or "content-length" in headers
        if self._head is not None and not self._head.done():
            self._head.set_result(NodeResponse(self, status, headers))

    @staticmethod
    def _check_ids(headers: dict[str, str], ids: tuple[str, str]) -> None:
        request_id, exchange = ids
        echoed = (headers.get(REQUEST_ID_HEADER), headers.get(EXCHANGE_HEADER, exchange))
        if echoed != ids:
            raise NodeMixedUp(
                f"the node's answer is not for this request (x-request-id "
                f"{_shown(echoed[0])}, exchange {_shown(echoed[1])}; sent {request_id}, {exchange})"
            )

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

    async def exchange(self, head: bytes, body: bytes, ids: tuple[str, str] | None) -> NodeResponse:
        """Send one request; its answer once the status line and headers have come, if it
        echoes ``ids`` (its x-request-id and exchange id; None: a server that echoes none)."""
        if self._transport is None or self._transport.is_closing():
            raise NodeHungUp("the node closed the connection")
        self._reset()
        self._ids = ids
        self._exchanging = True
        self._head = self._loop.create_future()
        self._last_data = self._loop.time()
        if len(body) < 16384:
            self._transport.write(head + body)
        else:
            self._transport.write(head)
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
        self.abort()

    def body_read(self) -> bool:
        return self._complete and not self._chunks

    async def read_some(self) -> bytes:
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._complete:
                return b""
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
            self._last_data = self._loop.time()  # the pause was the reader's, not the node's
            self._transport.resume_reading()
        return data

    def _watch_idle(self) -> None:
        """Fail a wait that gets no bytes for ``read_timeout``: one timer, moved only when it
        fires (not re-armed on every chunk)."""
        if self._timer is None:
            deadline = self._last_data + self.pool.read_timeout
            self._timer = self._loop.call_at(deadline, self._check_idle)

    def _check_idle(self) -> None:
        self._timer = None
        if self._waiter is None or self._waiter.done():
            return
        deadline = self._last_data + self.pool.read_timeout
        if self._loop.time() >= deadline:
            seconds = self.pool.read_timeout
            self._fail(TimeoutError(f"the node sent nothing for {seconds:.0f} s"))
        else:
            self._timer = self._loop.call_at(deadline, self._check_idle)

    def awaiting_head(self) -> bool:
        return self._exchanging and self._head is not None and not self._head.done()

    def call_off(self, error: NodeLinkError) -> None:
        self._fail(error)

    def finish(self, reuse: bool) -> None:
        """End the exchange: back to the pool when the answer was read whole, the request
        went out whole, and the node keeps the connection open; dropped otherwise."""
        self.pool.done(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._exchanging = False
        transport = self._transport
        complete = self._complete and not self._chunks and self._error is None
        keep = reuse and complete and self._framed and self._keep_alive
        self._head = None
        self._chunks.clear()
        if keep and transport is not None and not transport.get_write_buffer_size():
            self.pool.put_back(self)
        else:
            self.abort()

    def abort(self) -> None:
        """Drop the connection at once (no TLS goodbye to wait on): the node sees it gone."""
        if self._transport is not None:
            self._transport.abort()
            self._transport = None


def _shown(value: str | None) -> str:
    """A node's header value in a message: bounded, printable."""
    if value is None:
        return "missing"
    return repr(value[:64])


def request_head(origin: Origin, path: str, headers: dict[str, str], length: int) -> bytes:
    fields = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
    if fields.count("\n") != len(headers) or fields.count("\r") != len(headers):
        raise ValueError("a header to a node holds a line break")
    return (
        b"POST " + origin.prefix + path.encode("ascii") + b" HTTP/1.1\r\nHost: "
        + origin.host_header + b"\r\n" + fields.encode("latin-1")
        + b"content-length: " + str(length).encode("ascii") + b"\r\n\r\n"
    )  # fmt: skip
