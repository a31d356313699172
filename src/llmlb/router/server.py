"""``llmlb serve``: open the state, build the app, serve."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable

from llmlb.common.files import write_private
from llmlb.common.serving import bind, serve, url_of
from llmlb.common.settings import ROUTER_URL_FILE, RouterSettings
from llmlb.router.app import create_app
from llmlb.router.service import RouterService

log = logging.getLogger(__name__)


async def run_router(
    settings: RouterSettings,
    on_started: Callable[[str, RouterService], Awaitable[None] | None] | None = None,
) -> None:
    service = await RouterService.open(settings)
    app = create_app(service)
    sock = bind(settings.host, settings.port)
    # Ollama's port, for clients set up for an Ollama server: the same app (Ollama's routes
    # are the router's), another socket.
    extra = [bind(settings.host, settings.ollama_port)] if settings.ollama_port is not None else []

    url_file = settings.home / ROUTER_URL_FILE

    async def announce(url: str) -> None:
        service.fleet.own_ports = frozenset(s.getsockname()[1] for s in (sock, *extra))
        write_private(url_file, url + "\n")
        for other in extra:  # (before the URL line, which scripts wait for)
            print(f"Ollama's API also on {url_of(other, settings.tls_cert is not None)}",
                  flush=True)  # fmt: skip
        print(f"llmlb router listening on {url}", flush=True)
        if on_started is not None:
            result = on_started(url, service)
            if result is not None:
                await result

    try:
        await serve(app, sock, settings, announce, extra=extra)
    finally:
        # Only our own URL: another router may have started on this home since.
        with contextlib.suppress(OSError):
            if url_file.read_text().strip() == url_of(sock, settings.tls_cert is not None):
                url_file.unlink()
