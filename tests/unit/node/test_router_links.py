"""Routers found by DNS (``--router dns+URL``): the node joins every address, follows the
name as routers come and go, and keeps its routers through a failed lookup. Real links over a
scripted router (httpx.MockTransport) and a scripted resolver."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import httpx

from llmlb.common.settings import NodeSettings
from llmlb.node.registration import RouterLink
from llmlb.node.router_links import RouterLinks, lookup, with_address
from llmlb.node.service import NodeService

GROUP = "http://routers.llmlb.svc:32768"


class Routers:
    """Every router address answers; what each heard is counted by host."""

    def __init__(self) -> None:
        self.registered: Counter[str] = Counter()
        self.heartbeats: Counter[str] = Counter()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        if request.url.path == "/api/nodes":
            self.registered[host] += 1
            return httpx.Response(201, json={"node_id": "n1", "heartbeat_interval": 0.02,
                                             "status": "ready"})  # fmt: skip
        self.heartbeats[host] += 1
        return httpx.Response(200, json={"status": "ready"})


async def until(predicate: object) -> None:
    async with asyncio.timeout(30):
        while not predicate():  # type: ignore[operator]  # noqa: ASYNC110 (scripted: no event)
            await asyncio.sleep(0.01)


def links_over(
    routers: Routers, home: Path, dns: dict[str, list[str]], fixed: list[str]
) -> RouterLinks:
    service = NodeService(NodeSettings(home=home, allow_cpu=True), devices=[], ram_total=8 << 30)

    async def resolve(url: str) -> list[str]:
        return [with_address(url, address) for address in dns[url]]

    transport = httpx.MockTransport(routers)
    return RouterLinks(
        lambda url: RouterLink(service, url, "t", "n", "http://node:1", transport=transport),
        fixed=fixed, groups=[GROUP], resolve=resolve,
    )  # fmt: skip


async def test_every_address_is_joined_and_the_links_follow_the_name(tmp_path: Path) -> None:
    routers = Routers()
    dns = {GROUP: ["10.0.0.1", "10.0.0.2"]}
    links = links_over(routers, tmp_path, dns, fixed=["http://static:32768"])
    await links.start()
    try:
        await until(lambda: {"10.0.0.1", "10.0.0.2", "static"} <= set(routers.heartbeats))
        urls = {link.status()["url"] for link in links.current()}
        assert urls == {"http://10.0.0.1:32768", "http://10.0.0.2:32768", "http://static:32768"}

        dns[GROUP] = ["10.0.0.2", "10.0.0.3"]  # a router replaced by another
        assert await links.look_up() is True
        let_go = routers.heartbeats["10.0.0.1"]  # its goodbye included: look_up awaited it
        await until(lambda: routers.heartbeats["10.0.0.3"] > 0)
        assert "http://10.0.0.1:32768" not in {link.status()["url"] for link in links.current()}
        still = routers.heartbeats["10.0.0.2"]
        await until(lambda: routers.heartbeats["10.0.0.2"] >= still + 5)  # intervals pass
        assert routers.heartbeats["10.0.0.1"] == let_go  # the one let go hears nothing more

        dns[GROUP] = []  # a lookup that finds nothing keeps the routers the node has
        assert await links.look_up() is False
        assert len(links.current()) == 3
    finally:
        await links.close()
    assert links.current() == []


async def test_lookup_gives_one_url_per_address_and_nothing_for_an_unknown_name() -> None:
    found = await lookup("http://localhost:32768/prefix")
    assert "http://127.0.0.1:32768/prefix" in found
    assert await lookup("http://no-such-router.invalid:32768") == []
    assert with_address("https://r:1", "fd00::1") == "https://[fd00::1]:1"


def test_dns_urls_are_plain_urls_for_everything_else(tmp_path: Path) -> None:
    settings = NodeSettings(home=tmp_path, router="dns+http://routers:32768, http://r1:32768/")
    assert settings.routers == ["http://routers:32768", "http://r1:32768"]
    assert settings.router_groups == ["http://routers:32768"]
