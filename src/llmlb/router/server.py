"""``llmlb serve``: open the state, build the app, serve."""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable

from llmlb.common import tracing
from llmlb.common.errors import BadRequest, LlmlbError, Unavailable
from llmlb.common.files import write_private
from llmlb.common.serving import bind, serve, url_of
from llmlb.common.settings import ROUTER_URL_FILE, RouterSettings
from llmlb.router.app import create_app
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


def listening_sockets(settings: RouterSettings) -> list[socket.socket]:
    """The router's port, then Ollama's when set: a port that is taken is a clear error,
    before anything is opened."""
    sock = _listening(settings.host, settings.port, "--port")
    # Ollama's port, for clients set up for an Ollama server: the same app (Ollama's routes
    # are the router's), another socket.
    if settings.ollama_port is None:
        return [sock]
    if settings.ollama_port == settings.port and settings.port != 0:
        sock.close()
        raise BadRequest(f"--ollama-port {settings.ollama_port} is the router's --port: "
                         "give another", param="ollama_port")  # fmt: skip
    try:
        return [sock, _listening(settings.host, settings.ollama_port, "--ollama-port")]
    except LlmlbError:
        sock.close()
        raise


def print_listening(url: str, extra: list[socket.socket], settings: RouterSettings) -> None:
    """The lines scripts wait for (the router's URL last)."""
    for other in extra:
        print(f"Ollama's API also on {url_of(other, settings.tls_cert is not None)}", flush=True)
    print(f"llmlb router listening on {url}", flush=True)


def _listening(host: str, port: int, option: str) -> socket.socket:
    try:
        return bind(host, port)
    except OSError as exc:  # (taken: an Ollama server on 11434, another router)
        raise Unavailable(f"cannot listen on {host}:{port} ({option}): {exc.strerror or exc}",
                          code="port_unavailable") from None  # fmt: skip
