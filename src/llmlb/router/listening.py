"""The router's listening sockets, bound before anything else opens: a port that is taken is
a clear error at once (and ``--workers``' supervisor binds them without loading the router)."""

from __future__ import annotations

import socket

from llmlb.common.errors import BadRequest, LlmlbError, Unavailable
from llmlb.common.serving import bind, url_of
from llmlb.common.settings import RouterSettings


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
