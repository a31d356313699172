"""Connection limits for the router's and the node's HTTP servers (uvicorn, httptools).

uvicorn closes a keep-alive connection that stays idle between requests, but not one that
never finishes its request headers: a client that opens connections and sends nothing (or
a header a byte at a time) would hold them, and the process's file descriptors, forever.
This protocol gives every request's headers ``header_timeout`` seconds from its first byte
(or from the connection's start) and closes the connection when they are late, and bounds
their size: httptools would buffer a header of any length (50 MB in one header took the
router from 95 to 151 MB of memory), so a request whose headers pass ``max_header_bytes`` is
answered 431 and its connection closed before more is read. Bodies are
bounded by ``read_body`` (``body_timeout``), idle connections by uvicorn's keep-alive timeout,
and their number by ``limit_concurrency`` (a 503 beyond it, except for the probes).

When the server stops, uvicorn closes every connection between requests at once. A client
may have sent its next request on it already: closing a socket with unread bytes resets it,
and the client sees a request it had sent lost (tests/integration/test_router_restart.py saw
one in a few runs). A connection whose next request has begun arriving (bytes read, or
waiting in the socket) is kept instead: that request is answered, with ``Connection: close``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from collections.abc import Callable
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from llmlb.common.errors import error_body

PROBES = frozenset({b"/health", b"/startup", b"/ready"})
ABORT_KEY = "llmlb.abort"  # in the ASGI scope: drops the connection without flushing
# In the ASGI scope: ``hook(callback)`` calls ``callback`` once if the client leaves before
# the answer is complete, and returns what stops that (common.departure: no watcher task).
DEPARTURE_HOOK = "llmlb.on_departure"


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    header_timeout: float = 10.0  # set per server by guarded_protocol()
    max_header_bytes: int = 65536

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        # Bytes of the current request's headers read so far (None: not reading headers),
        # and the last bytes read, in case the blank line that ends them is split.
        self._header_bytes: int | None = 0
        self._tail = b""
        self._refused = False
        self._stopping = False  # the server stops: answer what comes, then close
        # The current request's departure callback (DEPARTURE_HOOK), with its cycle.
        self._departure: tuple[Any, Callable[[], None]] | None = None

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        counted = self._header_bytes
        if counted is not None:
            room = self.max_header_bytes - counted
            if len(data) > room:
                end = (self._tail + data).find(b"\r\n\r\n")
                if end == -1 or end + 4 - len(self._tail) > room:
                    self._refuse_headers()
                    return
            self._header_bytes = counted + len(data)
            self._tail = data[-3:]
        super().data_received(data)

    def _refuse_headers(self) -> None:
        self._disarm()
        self._header_bytes, self._refused = None, True  # nothing more is read
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # An earlier (pipelined) request is still being answered: a 431 now would land
            # inside that answer. The connection closes once that answer is out.
            cycle.keep_alive = False
            return
        body = orjson.dumps(error_body(
            f"the request's headers are larger than {self.max_header_bytes} bytes",
            "invalid_request_error", code="headers_too_large",
        ))  # fmt: skip
        head = (
            "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        self.transport.write(head.encode() + body)
        self.transport.close()

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._header_bytes, self._tail = 0, b""  # what comes next is the next request's head

    def on_headers_complete(self) -> None:
        self._disarm()
        self._header_bytes = None
        self._start_cycle()
        if self._stopping:
            self.cycle.keep_alive = False

    def _start_cycle(self) -> None:
        if self.url.partition(b"?")[0] not in PROBES:
            super().on_headers_complete()
            # For a response that must end the connection at once (asgi.StreamRelay, a
            # client that stopped reading): close() would wait to flush to that client.
            self.scope[ABORT_KEY] = self._drop  # type: ignore[literal-required]
            self.scope[DEPARTURE_HOOK] = self._on_departure  # type: ignore[literal-required]
            if self.scope.get("http_version") == "1.0":
                _close_delimited(self.cycle)
            return
        # Probes answer even at the connection cap: an orchestrator must see the process
        # alive (and busy), not a 503 that looks like a dead one.
        limit, self.limit_concurrency = self.limit_concurrency, None
        try:
            super().on_headers_complete()
        finally:
            self.limit_concurrency = limit

    def shutdown(self) -> None:
        self._stopping = True  # a request that begins from now on is the connection's last
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False  # the answer under way closes the connection
        elif self._header_bytes == 0 and not self.pipeline and not self._bytes_waiting():
            self.transport.close()
        # else the next request has begun: answered, then closed (or late: header_timeout)

    def _bytes_waiting(self) -> bool:
        """Whether the client has sent bytes this process has not read yet."""
        sock = self.transport.get_extra_info("socket")
        if sock is None:
            return False
        try:  # (uvloop's socket object reads nothing: a duplicate of its descriptor does)
            with socket.socket(fileno=os.dup(sock.fileno())) as duplicate:
                duplicate.setblocking(False)
                return bool(duplicate.recv(1, socket.MSG_PEEK))
        except OSError:  # nothing waiting (BlockingIOError), or the connection is gone
            return False

    def _drop(self) -> None:
        """Reset the connection: nothing still queued for the client is sent (a plain close,
        or abort on uvloop, leaves the kernel sending it at the client's pace)."""
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()

    def _on_departure(self, callback: Callable[[], None]) -> Callable[[], None]:
        cycle = self.cycle
        if cycle.disconnected:
            self.loop.call_soon(callback)
            return _nothing
        entry = self._departure = (cycle, callback)

        def stop() -> None:
            if self._departure is entry:
                self._departure = None

        return stop

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        departure, self._departure = self._departure, None
        super().connection_lost(exc)
        if departure is not None and not departure[0].response_complete:
            departure[1]()
        # The scope's hooks are this protocol's bound methods, and the protocol holds the
        # scope: a cycle that kept every closed connection (8 KB) until a full collection,
        # rare under serving.GC_THRESHOLDS, so the router's memory grew with the connections
        # its clients opened. Without the hooks a closed connection is freed at once; a
        # request still running finds none and falls back to what it does without them.
        scopes = [cycle.scope for cycle, _ in self.pipeline]
        if self.scope is not None:
            scopes.append(self.scope)
        for scope in scopes:
            scope.pop(ABORT_KEY, None)  # type: ignore[misc]
            scope.pop(DEPARTURE_HOOK, None)  # type: ignore[misc]


def _nothing() -> None:
    return None


def _close_delimited(cycle: Any) -> None:
    """An HTTP/1.0 client knows no chunked encoding: a body of unknown length (a stream) is
    sent as it is and ended by closing the connection, as HTTP/1.0 frames it. uvicorn sends
    chunked to every version; it is told here that the length is known, and held to the
    real one only at the end. (Its keep-alive is already off for HTTP/1.0.)"""
    send = cycle.send

    async def send_http10(message: Any) -> None:
        if message["type"] == "http.response.start":
            cycle.chunked_encoding = False
            cycle.expected_content_length = 1 << 62
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            cycle.expected_content_length = len(message.get("body", b""))
        await send(message)

    cycle.send = send_http10


def guarded_protocol(
    header_timeout: float, max_header_bytes: int
) -> type[GuardedHttpToolsProtocol]:
    limits = {"header_timeout": header_timeout, "max_header_bytes": max_header_bytes}
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), limits)


def raise_open_file_limit() -> int:
    """Lift the soft limit on open files to the hard one (every connection is a file); 0
    where the platform has no such limit (Windows)."""
    try:
        import resource  # POSIX only: imported here so the module imports everywhere
    except ImportError:
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
        except (ValueError, OSError):
            return soft
    return soft
