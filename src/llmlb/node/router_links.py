"""The node's links to its routers, one ``RouterLink`` each: the routers named outright, and
those found by DNS.

``--router dns+http://llmlb-routers:32768`` makes every address the name resolves to a router
of its own (a Kubernetes headless Service lists its ready pods so), looked up again every
``LOOKUP_SECONDS``: a router that scales out or is replaced is joined, one that is gone is
let go. Every router must hear the node's heartbeats, since a router calls only the nodes it
has heard (with the key it heard them with). A failed lookup keeps the links it has: a DNS
hiccup must not cut the node off from routers that still run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit, urlunsplit

from llmlb.node.registration import RouterLink

log = logging.getLogger(__name__)

LOOKUP_SECONDS = 30.0
RETRY_SECONDS = 5.0  # while a name resolves to nothing yet (no router ready)


async def lookup(url: str) -> list[str]:
    """``url`` once per address its host name resolves to, sorted; [] when it resolves to
    none (an NXDOMAIN is what a headless Service without ready pods answers)."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    loop = asyncio.get_running_loop()
    try:
        found = await loop.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):  # socket.gaierror is an OSError
        return []
    addresses = sorted({str(info[4][0]) for info in found})
    return [with_address(url, address) for address in addresses]


def with_address(url: str, address: str) -> str:
    parts = urlsplit(url)
    host = f"[{address}]" if ":" in address else address
    return urlunsplit(parts._replace(netloc=f"{host}:{parts.port}" if parts.port else host))


class RouterLinks:
    def __init__(
        self,
        make_link: Callable[[str], RouterLink],
        fixed: list[str],
        groups: list[str],
        resolve: Callable[[str], Awaitable[list[str]]] = lookup,
    ) -> None:
        self._make_link = make_link
        self._fixed = fixed  # URLs joined as they are
        self._groups = groups  # URLs whose every address is a router
        self._resolve = resolve  # tests put a scripted DNS here
        self._links: dict[str, RouterLink] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._watcher: asyncio.Task[None] | None = None

    def current(self) -> list[RouterLink]:
        return list(self._links.values())

    async def start(self) -> None:
        for url in self._fixed:
            self._join(url)
        if self._groups:
            await self.look_up()
            self._watcher = asyncio.create_task(self._watch())

    async def look_up(self) -> bool:
        """Join the addresses found, let go of those gone; False when a name resolved to
        nothing (the links found before are kept)."""
        wanted: set[str] = set()
        complete = True
        for group in self._groups:
            found = await self._resolve(group)
            if not found:
                log.warning("no router found at %s yet (its name resolves to no address)", group)
                complete = False
            wanted.update(found)
        if not complete:
            wanted |= {url for url in self._links if url not in self._fixed}
        for url in sorted(wanted - self._links.keys()):
            log.info("joining router %s", url)
            self._join(url)
        gone = [url for url in self._links if url not in wanted and url not in self._fixed]
        for url in gone:
            log.info("router %s is gone from DNS; leaving it", url)
            await self._leave(url)
        return complete

    async def _watch(self) -> None:
        while True:
            complete = await self.look_up()
            await asyncio.sleep(LOOKUP_SECONDS if complete else RETRY_SECONDS)

    def _join(self, url: str) -> None:
        link = self._make_link(url)
        self._links[url] = link
        self._tasks[url] = asyncio.create_task(link.run())

    async def _leave(self, url: str) -> None:
        link, task = self._links.pop(url), self._tasks.pop(url)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await link.goodbye()

    async def announce(self) -> None:
        """A heartbeat to every router now (the node's state changed: it is draining)."""
        await asyncio.gather(*(link.report() for link in self._links.values()))

    async def close(self) -> None:
        """Stop every link; each says goodbye (the node is draining)."""
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        await asyncio.gather(*(self._leave(url) for url in list(self._links)))
