"""``llmlb node``: probe the hardware, build the service and app, serve."""

from __future__ import annotations

import logging
import socket
from urllib.parse import urlsplit

import psutil

from llmlb.common import tracing
from llmlb.common.errors import LlmlbError
from llmlb.common.serving import bind, client_tls, serve, url_of
from llmlb.common.settings import NodeSettings
from llmlb.node.app import create_app
from llmlb.node.devices import detect_devices
from llmlb.node.registration import RouterLink
from llmlb.node.router_links import RouterLinks
from llmlb.node.service import NodeService

log = logging.getLogger(__name__)


class NoAdvertiseUrl(LlmlbError):
    """Bound to every interface, and no way to tell which address the router can reach."""


def advertised_url(sock: socket.socket, router: str, tls: bool = False) -> str:
    """The URL the router should use to reach this node.

    Bound to one address: that address. Bound to every interface (0.0.0.0 or ::): the
    address of the interface that routes to the router (found by connecting a UDP socket,
    which sends nothing).
    """
    host, port = sock.getsockname()[:2]
    if host not in ("0.0.0.0", "::"):
        return url_of(sock, tls)
    target = urlsplit(router)
    try:
        infos = socket.getaddrinfo(target.hostname, target.port or 80, type=socket.SOCK_DGRAM)
        family, _, _, _, address = infos[0]
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect(address)
            local = probe.getsockname()[0]
    except (OSError, IndexError, UnicodeError) as exc:
        raise NoAdvertiseUrl(
            f"the node listens on every interface ({host}) and cannot tell which address "
            f"router {router} reaches it at ({exc}); pass --advertise-url http://HOST:{port}"
        ) from exc
    scheme = "https" if tls else "http"
    return f"{scheme}://[{local}]:{port}" if ":" in local else f"{scheme}://{local}:{port}"


def build_service(settings: NodeSettings) -> NodeService:
    devices, engine = detect_devices(settings.allow_cpu, settings.gpus)
    return NodeService(settings, devices, psutil.virtual_memory().total, engine=engine)


async def run_node(settings: NodeSettings) -> None:
    tracing.configure("llmlb-node", settings.otlp_endpoint)
    service = build_service(settings)
    sock = bind(settings.host, settings.port)
    links = None
    if settings.routers:
        public_url = settings.advertise_url or advertised_url(
            sock, settings.routers[0], settings.tls_cert is not None
        )
        log.info("the router will reach this node at %s", public_url)
        name = settings.node_name or socket.gethostname()
        verify = client_tls(settings)
        # Every router hears the node: each learns its key from the heartbeats and can call
        # it, and each sees it alive directly (several routers share one database).
        groups = settings.router_groups
        links = RouterLinks(
            lambda url: RouterLink(service, url, settings.node_token, name, public_url,
                                   verify=verify),
            fixed=[url for url in settings.routers if url not in groups], groups=groups,
        )  # fmt: skip
    app = create_app(service, links)

    def announce(url: str) -> None:
        models = ", ".join(m.name for m in service.store.list()) or "none yet"
        budget_mib = service.pool.budget_bytes // 2**20
        log.info("models in %s: %s; memory budget %d MiB", settings.models_dir, models, budget_mib)
        # Tests and scripts read this line to find the port when started with --port 0.
        print(f"llmlb node listening on {url}", flush=True)

    async def draining() -> None:
        """Tell the routers at once: they send nothing new while the requests here finish."""
        service.state = "draining"
        if links is not None:
            await links.announce()

    try:
        await serve(app, sock, settings, announce, on_stopping=draining)
    finally:
        tracing.shutdown()
