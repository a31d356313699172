"""HTTP/1.1 from the router to its nodes: the hot path's own client.

Every proxied request crosses this hop, and at 64 concurrent streams aiohttp's client was the
router's largest cost (about 30% of its event loop: request setup, a cookie jar and tracing
hooks nobody uses here, and bookkeeping per chunk). The hop needs little of it: one method
(POST), a JSON body the router already holds as bytes, answers framed by Content-Length or
chunked encoding, keep-alive, TLS. So this is a pool of ``asyncio.Protocol`` connections
(``router.proxy.node_connection``) that parse with httptools (llhttp, as uvicorn does on the
server side). aiohttp stays for everything else (model downloads, probes, the clouds).
Failures are the ``NodeLinkError``s of ``router.proxy.node_errors``.

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
import ssl
import time

from llmlb.common.asgi import EXCHANGE_HEADER, REQUEST_ID_HEADER
from llmlb.router.proxy.node_connection import (
    NodeConnection,
    NodeResponse,
    Origin,
    origin_of,
    request_head,
)
from llmlb.router.proxy.node_errors import NodeStalled, NodeUnreachable

# Idle connections are given up before a node's own keep-alive (30 s by default) closes them,
# so that a reused connection is seldom one the node is closing at that moment.
KEEPALIVE_SECONDS = 15.0
# Idle connections kept per node: enough for the concurrency a node takes, bounded.
MAX_IDLE_PER_NODE = 512


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
        self._origins: dict[str, Origin] = {}
        # Per node, its idle connections oldest first (a dict as an ordered set).
        self._idle: dict[Origin, dict[NodeConnection, None]] = {}
        # Per node, its connections carrying an exchange now (what call_off reaches).
        self._busy: dict[Origin, set[NodeConnection]] = {}
        self._sweep: asyncio.TimerHandle | None = None
        self._closed = False
        self._exchanges = 0

    async def post(
        self, base_url: str, path: str, headers: dict[str, str], body: bytes, fresh: bool = False,
        echoes: bool = True,
    ) -> NodeResponse:  # fmt: skip
        """POST ``body`` to ``path`` under ``base_url``; the answer once its headers have
        come. ``fresh``: on a new connection, not a pooled one. The answer must echo the
        request's ``x-request-id`` (``headers`` has one, or it gets the exchange id), unless
        the server is one that does not (``echoes``: an endpoint such as vLLM): for those the
        framing of HTTP/1.1 alone tells answers apart."""
        origin = self._origins.get(base_url)
        if origin is None:
            origin = self._origins[base_url] = origin_of(base_url)
        self._exchanges += 1
        exchange = f"{self._exchanges:x}"
        request_id = headers.get(REQUEST_ID_HEADER) or exchange
        headers = {**headers, REQUEST_ID_HEADER: request_id, EXCHANGE_HEADER: exchange}
        head = request_head(origin, path, headers, len(body))
        connection = None if fresh else self._take_idle(origin)
        if connection is None:
            connection = await self._connect(origin)
        busy = self._busy.get(origin)
        if busy is None:
            busy = self._busy[origin] = set()
        busy.add(connection)
        try:
            ids = (request_id, exchange) if echoes else None
            return await connection.exchange(head, body, ids)
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

    def done(self, connection: NodeConnection) -> None:
        """A connection's exchange is over (it goes back to the pool, or is dropped)."""
        busy = self._busy.get(connection.origin)
        if busy is not None:
            busy.discard(connection)

    def _take_idle(self, origin: Origin) -> NodeConnection | None:
        idle = self._idle.get(origin)
        stale_before = time.monotonic() - self._keepalive
        while idle:
            connection, _ = idle.popitem()  # the newest: the least likely to be stale
            if not connection.lost and connection.idle_since > stale_before:
                return connection
            connection.abort()
        return None

    async def _connect(self, origin: Origin) -> NodeConnection:
        if self._closed:
            raise NodeUnreachable("the router is shutting down")
        loop = asyncio.get_running_loop()
        tls = None
        if origin.tls:
            tls = self._tls = self._tls or ssl.create_default_context()
        try:
            async with asyncio.timeout(self.connect_timeout):
                transport, connection = await loop.create_connection(
                    lambda: NodeConnection(self, origin), origin.host, origin.port, ssl=tls
                )
        except TimeoutError as exc:
            raise NodeUnreachable(
                f"no connection to {origin.host}:{origin.port} within {self.connect_timeout:.0f} s"
            ) from exc
        except OSError as exc:  # refused, unreachable, unknown name, TLS refused
            raise NodeUnreachable(f"cannot connect to {origin.host}:{origin.port}: {exc}") from exc
        connection.connection_made(transport)  # uvloop calls it only on its next turn
        return connection

    def put_back(self, connection: NodeConnection) -> None:
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

    def forget(self, connection: NodeConnection) -> None:
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
