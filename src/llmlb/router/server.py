"""``llmlb serve``: open the state, build the app, serve."""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable

from llmlb.common import tracing
from llmlb.common.files import write_private
from llmlb.common.serving import serve, url_of
from llmlb.common.settings import ROUTER_URL_FILE, RouterSettings
from llmlb.router.app import create_app
from llmlb.router.listening import listening_sockets, print_listening
from llmlb.router.service import RouterService
from llmlb.router.workers import WorkerPlace

log = logging.getLogger(__name__)


async def run_router(
    settings: RouterSettings,
    on_started: Callable[[str, RouterService], Awaitable[None] | None] | None = None,
    worker: WorkerPlace | None = None,
    sockets: list[socket.socket] | None = None,
) -> None:
    """Serve until stopped. A worker (``--workers``, router.workers) is handed the ports
    its supervisor bound (``sockets``: the router's, then Ollama's) and announces nothing:
    the supervisor does, once every worker is up."""
    sock, *extra = sockets if sockets is not None else listening_sockets(settings)
    tracing.configure("llmlb-router", settings.otlp_endpoint)
    service = await RouterService.open(settings, worker)
    app = create_app(service)

    url_file = settings.home / ROUTER_URL_FILE

    async def announce(url: str) -> None:
        service.fleet.own_ports = frozenset(s.getsockname()[1] for s in (sock, *extra))
        if worker is None:
            write_private(url_file, url + "\n")
            print_listening(url, extra, settings)
        if on_started is not None:
            result = on_started(url, service)
            if result is not None:
                await result

    try:
        await serve(app, sock, settings, announce, extra=extra)
    finally:
        tracing.shutdown()
        # Only our own URL: another router may have started on this home since.
        with contextlib.suppress(OSError):
            if worker is None and url_file.read_text().strip() == url_of(
                sock, settings.tls_cert is not None
            ):
                url_file.unlink()
