"""The node's link to its router, against a scripted router (httpx.MockTransport)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from llmlb.common.settings import NodeSettings
from llmlb.node.registration import RouterLink
from llmlb.node.service import NodeService


def node_service(home: Path) -> NodeService:
    settings = NodeSettings(home=home, router="http://router", allow_cpu=True)
    return NodeService(settings, devices=[], ram_total=8 << 30)


async def test_the_link_survives_a_broken_answer_and_registers_on_retry(tmp_path: Path) -> None:
    """Review finding: any non-transport error ended the link for good (no heartbeats)."""
    answers = [
        httpx.Response(201, content=b"[]"),  # not an object: a TypeError inside the link
        httpx.Response(201, content=b"not json at all"),
        httpx.Response(201, json={"node_id": "n1", "heartbeat_interval": 0.05, "status": "ready"}),
    ]
    heartbeats = 0

    def router(request: httpx.Request) -> httpx.Response:
        nonlocal heartbeats
        if request.url.path == "/api/nodes":
            return answers.pop(0)
        heartbeats += 1
        return httpx.Response(200, json={"status": "ready"})

    link = RouterLink(
        node_service(tmp_path), "http://router", None, "n", "http://node:1",
        transport=httpx.MockTransport(router),
    )  # fmt: skip
    task = asyncio.create_task(link.run())
    try:
        for _ in range(200):
            if heartbeats >= 2:
                break
            await asyncio.sleep(0.05)
        assert heartbeats >= 2
        assert link.node_id == "n1"
        assert link.status()["connected"] is True
        assert not task.done()
    finally:
        task.cancel()


async def test_the_link_reports_why_the_router_is_lost(tmp_path: Path) -> None:
    def router(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    link = RouterLink(
        node_service(tmp_path), "http://router", None, "n", "http://node:1",
        transport=httpx.MockTransport(router),
    )  # fmt: skip
    task = asyncio.create_task(link.run())
    try:
        for _ in range(100):
            if link.last_error:
                break
            await asyncio.sleep(0.02)
        status = link.status()
        assert status["connected"] is False
        assert "unreachable" in status["error"]
    finally:
        task.cancel()
