"""HTTP/1.1 from the router to its nodes: the hot path's own client.

Every proxied request crosses this hop, and at 64 concurrent streams aiohttp's client was the
router's largest cost (about 30% of its event loop: request setup, a cookie jar and tracing
hooks nobody uses here, and bookkeeping per chunk). The hop needs little of it: one method
(POST), a JSON body the router already holds as bytes, answers framed by Content-Length or
chunked encoding, keep-alive, TLS. So this is a pool of ``asyncio.Protocol`` connections
that parse with httptools (llhttp, as uvicorn does on the server side). aiohttp stays for
everything else (model downloads, probes, the clouds).

Failures are ``NodeLinkError``s:
- ``NodeUnreachable``: no connection could be made (the node is down);
- ``NodeHungUp``: the connection closed before the answer began (often a pooled one the node
  had already closed: worth one more try on a new connection to the same node);
- ``NodeCutOff``: the answer began and then broke off (the node failed while answering);
- ``NodeBadAnswer``: bytes that are not a well-formed HTTP/1.1 answer, or not one a node may
  send (a status outside 100-599, headers past ``MAX_HEAD_BYTES``, endless interim answers);
- ``NodeMixedUp``: an answer that is not for the request sent (see below);
- ``NodeStalled``: the fleet called the exchange off (``NodeLinks.call_off``).
An answer that stalls for ``read_timeout`` seconds raises ``TimeoutError``.

An answer is delivered only to the request it is for. A node (or a gateway in front of one)
that sends a second or a late answer on a keep-alive connection would otherwise have it read
as the answer to the next request on that connection: another client's answer. So every
request carries its ``x-request-id`` and an exchange id unique in this process
(``EXCHANGE_HEADER``), the node echoes both, and an answer whose ids are missing or differ
is refused and its connection dropped. Bytes that come to an idle connection, or after an
answer ended, drop the connection too.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from dataclasses import dataclass
from typing import cast
from urllib.parse import quote, urlsplit

import httptools

from llmlb.common.asgi import EXCHANGE_HEADER, REQUEST_ID_HEADER

# A reader that falls this far behind (a slow client at the far end) stops the node's socket
# being read, so that a stream never piles up in the router's memory.
_HIGH_WATER = 64 * 1024
# Idle connections are given up before a node's own keep-alive (30 s by default) closes them,
# so that a reused connection is seldom one the node is closing at that moment.
KEEPALIVE_SECONDS = 15.0
# Idle connections kept per node: enough for the concurrency a node takes, bounded.
MAX_IDLE_PER_NODE = 512
# The most bytes an answer's head may take, interim answers included: counted as they are
# fed to llhttp, which sets no bound and copies a header line that never ends again and again.
MAX_HEAD_BYTES = 64 * 1024
# Interim (1xx) answers before the real one: a node sends one now and then, not a flood.
MAX_INTERIM_ANSWERS = 8


class NodeLinkError(ConnectionError):
    """The node could not be reached or broke the exchange."""


class NodeUnreachable(NodeLinkError):
    """No connection could be made: refused, no route, name unknown, TLS refused, timed out."""


class NodeHungUp(NodeLinkError):
    """The connection closed (or failed) before the answer began."""


class NodeCutOff(NodeLinkError):
    """The answer began, then the connection closed (or failed) before its end."""


class NodeBadAnswer(NodeLinkError):
    """What came back was not a well-formed HTTP/1.1 answer."""


class NodeStalled(NodeLinkError):
    """Called off by the fleet while waiting for the answer: the node heartbeats but does not
    get the requests sent to it (``router.fleet.health``)."""


class NodeMixedUp(NodeBadAnswer):
    """The answer's ids are not the request's: it was for another request (a stale or extra
    answer on a reused connection), and is never delivered."""


class _Surplus(Exception):
    """Bytes came after the answer's end (it is whole: only the connection is dropped)."""


@dataclass(frozen=True, eq=False)  # one per base URL (NodeLinks._origins): hashed by identity
class _Origin:
    host: str
    port: int
    tls: bool
    host_header: bytes
    prefix: bytes  # the base URL's path (a node behind a gateway at /gpu1), or b""


def _origin(base_url: str) -> _Origin:
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise NodeUnreachable(f"not an http(s) URL: {base_url!r}")
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    prefix = quote(parts.path.rstrip("/"), safe="/%:@!$&'()*+,;=-._~").encode("ascii")
    return _Origin(parts.hostname, port, tls, parts.netloc.encode("idna"), prefix)


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


class _Connection(asyncio.Protocol):
    """One keep-alive connection to a node, carrying one exchange at a time."""

    def __init__(self, pool: NodeLinks, origin: _Origin) -> None:
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
        self._ids: tuple[str, str] = ("", "")  # (x-request-id, exchange id) the answer echoes
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
        request_id, exchange = self._ids
        echoed = (headers.get(REQUEST_ID_HEADER), headers.get(EXCHANGE_HEADER, exchange))
        if echoed != self._ids:
            raise NodeMixedUp(
                f"the node's answer is not for this request (x-request-id "
                f"{_shown(echoed[0])}, exchange {_shown(echoed[1])}; sent {request_id}, {exchange})"
            )
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        self._framed = chunked or "content-length" in headers
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

    async def exchange(self, head: bytes, body: bytes, ids: tuple[str, str]) -> NodeResponse:
        """Send one request; its answer once the status line and headers have come, if it
        echoes ``ids`` (its x-request-id and exchange id)."""
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


class NodeLinks:
    """Keep-alive connections to every node, one exchange at a time on each."""

    def __init__(
        self,
        tls: ssl.SSLContext | None,
        connect_timeout: float,
        read_timeout: float,
        keepalive: float = KEEPALIVE_SECONDS,
    ) -> None:
        self._tls = tls
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._keepalive = keepalive
        self._origins: dict[str, _Origin] = {}
        # Per node, its idle connections oldest first (a dict as an ordered set).
        self._idle: dict[_Origin, dict[_Connection, None]] = {}
        # Per node, its connections carrying an exchange now (what call_off reaches).
        self._busy: dict[_Origin, set[_Connection]] = {}
        self._sweep: asyncio.TimerHandle | None = None
        self._closed = False
        self._exchanges = 0

    async def post(
        self, base_url: str, path: str, headers: dict[str, str], body: bytes, fresh: bool = False
    ) -> NodeResponse:
        """POST ``body`` to ``path`` under ``base_url``; the answer once its headers have
        come. ``fresh``: on a new connection, not a pooled one. The answer must echo the
        request's ``x-request-id`` (``headers`` has one, or it gets the exchange id)."""
        origin = self._origins.get(base_url)
        if origin is None:
            origin = self._origins[base_url] = _origin(base_url)
        self._exchanges += 1
        exchange = f"{self._exchanges:x}"
        request_id = headers.get(REQUEST_ID_HEADER) or exchange
        headers = {**headers, REQUEST_ID_HEADER: request_id, EXCHANGE_HEADER: exchange}
        head = _request_head(origin, path, headers, len(body))
        connection = None if fresh else self._take_idle(origin)
        if connection is None:
            connection = await self._connect(origin)
        busy = self._busy.get(origin)
        if busy is None:
            busy = self._busy[origin] = set()
        busy.add(connection)
        try:
            return await connection.exchange(head, body, (request_id, exchange))
        except BaseException:
            connection.abort()
            raise

    def call_off(self, base_url: str, reason: str) -> int:
        """Fail every exchange with the node at ``base_url`` that still waits for its answer
        to begin, with ``NodeStalled``; how many there were."""
        origin = self._origins.get(base_url)
        waiting = [c for c in self._busy.get(origin, ()) if c.awaiting_head()] if origin else []
        for connection in waiting:
            connection.call_off(NodeStalled(reason))
        return len(waiting)

    def done(self, connection: _Connection) -> None:
        """A connection's exchange is over (it goes back to the pool, or is dropped)."""
        busy = self._busy.get(connection.origin)
        if busy is not None:
            busy.discard(connection)

    def _take_idle(self, origin: _Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        stale_before = time.monotonic() - self._keepalive
        while idle:
            connection, _ = idle.popitem()  # the newest: the least likely to be stale
            if not connection.lost and connection.idle_since > stale_before:
                return connection
            connection.abort()
        return None

    async def _connect(self, origin: _Origin) -> _Connection:
        if self._closed:
            raise NodeUnreachable("the router is shutting down")
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
        idle = self._idle.setdefault(connection.origin, {})
        if self._closed or len(idle) >= MAX_IDLE_PER_NODE:
            connection.abort()
            return
        connection.idle_since = time.monotonic()
        idle[connection] = None
        if self._sweep is None:
            loop = asyncio.get_running_loop()
            self._sweep = loop.call_later(self._keepalive, self._drop_stale)

    def _drop_stale(self) -> None:
        """Close what idled past the keep-alive (after a burst, most of the pool would
        otherwise stay open for as long as the node allows)."""
        self._sweep = None
        stale_before = time.monotonic() - self._keepalive
        for origin, idle in list(self._idle.items()):
            while idle:
                oldest = next(iter(idle))
                if oldest.idle_since > stale_before:
                    break
                del idle[oldest]
                oldest.abort()
            if not idle:
                del self._idle[origin]
        if self._idle and not self._closed:
            loop = asyncio.get_running_loop()
            self._sweep = loop.call_later(self._keepalive, self._drop_stale)

    def forget(self, connection: _Connection) -> None:
        """A connection closed: no longer one to reuse."""
        idle = self._idle.get(connection.origin)
        if idle is not None:
            idle.pop(connection, None)

    def idle_count(self) -> int:
        """Idle connections held, over all nodes."""
        return sum(len(idle) for idle in self._idle.values())

    async def close(self) -> None:
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for idle in self._idle.values():
            for connection in idle:
                connection.abort()
        self._idle.clear()


def _shown(value: str | None) -> str:
    """A node's header value in a message: bounded, printable."""
    if value is None:
        return "missing"
    return repr(value[:64])


def _request_head(origin: _Origin, path: str, headers: dict[str, str], length: int) -> bytes:
    fields = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
    if fields.count("\n") != len(headers) or fields.count("\r") != len(headers):
        raise ValueError("a header to a node holds a line break")
    return (
        b"POST " + origin.prefix + path.encode("ascii") + b" HTTP/1.1\r\nHost: "
        + origin.host_header + b"\r\n" + fields.encode("latin-1")
        + b"content-length: " + str(length).encode("ascii") + b"\r\n\r\n"
    )  # fmt: skip
