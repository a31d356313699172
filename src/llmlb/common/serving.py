"""Running an ASGI app on uvicorn: bind first (port 0 works), announce the URL, stop gracefully."""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import uvicorn
from starlette.types import ASGIApp

from llmlb.common.connections import guarded_protocol, raise_open_file_limit
from llmlb.common.settings import CommonSettings

log = logging.getLogger(__name__)
T = TypeVar("T")


# Collect the youngest generation every 20,000 allocations instead of 700. A proxied request
# allocates a few hundred objects and frees nearly all of them by reference counting, so the
# default ran a collection every request or two: at 64 concurrent clients that cost the router
# a fifth of its throughput and tripled its p99 (bench/router_overhead.py: 1,350 -> 1,730
# requests/s, p99 133 -> 54 ms). The older generations' thresholds are raised to match.
GC_THRESHOLDS = (20_000, 50, 100)


def tune_gc() -> None:
    """Freeze what start-up allocated (modules, settings: never garbage) so that collections
    stop scanning it, and collect the young generation less often (GC_THRESHOLDS)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop when it is installed (it is, with uvicorn[standard])."""
    tune_gc()
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket, tls: bool = False) -> str:
    host, port = sock.getsockname()[:2]
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    scheme = "https" if tls else "http"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def client_tls(settings: CommonSettings) -> ssl.SSLContext:
    """How this process checks the certificates of what it calls: the system's trusted CAs,
    plus the ``tls_ca`` bundle when given (added, not instead: the same sessions fetch models
    from public origins). One context for httpx and aiohttp alike (httpx alone would trust
    certifi's bundle rather than the system's)."""
    return trusting(settings.tls_ca)


def trusting(ca_bundle: Path | None) -> ssl.SSLContext:
    """The system's trusted CAs, plus ``ca_bundle`` when given."""
    context = ssl.create_default_context()
    if ca_bundle is not None:
        context.load_verify_locations(cafile=str(ca_bundle))
    return context


class _Server(uvicorn.Server):
    """uvicorn's server that also says when a stop signal arrives: the drain starts then,
    and whoever sends work here should hear of it then, not when it is over."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.stopping = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets=sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if self._loop is not None:  # from a signal handler: through the loop's wakeup
            self._loop.call_soon_threadsafe(self.stopping.set)


def make_server(app: ASGIApp, settings: CommonSettings) -> _Server:
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
        timeout_keep_alive=settings.idle_timeout,
        limit_concurrency=settings.max_connections,
        http=guarded_protocol(settings.header_timeout, settings.max_header_bytes),
        lifespan="on",
        ssl_certfile=settings.tls_cert,
        ssl_keyfile=settings.tls_key,
        # uvicorn believes X-Forwarded-For from loopback by default: only configured proxies.
        proxy_headers=bool(settings.trusted_proxies),
        forwarded_allow_ips=settings.trusted_proxies or None,
    )
    return _Server(config)


async def serve(
    app: ASGIApp,
    sock: socket.socket,
    settings: CommonSettings,
    on_started: Callable[[str], Awaitable[None] | None] | None = None,
    on_stopping: Callable[[], Awaitable[None]] | None = None,
    extra: list[socket.socket] | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM; in-flight requests get ``shutdown_grace_seconds``.
    ``on_stopping`` runs as the signal arrives, while those requests finish. ``extra``:
    more sockets for the same app (the URL announced is ``sock``'s)."""
    raise_open_file_limit()
    server = make_server(app, settings)
    task = asyncio.create_task(server.serve(sockets=[sock, *(extra or [])]))
    if on_stopping is not None:
        stop_hook = on_stopping

        async def when_stopping() -> None:
            await server.stopping.wait()
            await stop_hook()

        watcher = asyncio.create_task(when_stopping())
        task.add_done_callback(lambda _: watcher.cancel())
    while not server.started and not task.done():  # noqa: ASYNC110 (uvicorn has no event)
        await asyncio.sleep(0.02)
    if server.started and on_started is not None:
        result = on_started(url_of(sock, settings.tls_cert is not None))
        if result is not None:
            await result
    await task
