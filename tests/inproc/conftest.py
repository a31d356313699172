"""The router and node apps in this process, over httpx.ASGITransport (no sockets).

For rules that need no real process: auth per route, validation, error shapes, metrics.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from llmlb.common.settings import RouterSettings
from llmlb.router.app import create_app
from llmlb.router.service import RouterService

LOOPBACK = ("127.0.0.1", 40000)
REMOTE = ("192.0.2.10", 40000)  # TEST-NET-1: a caller that is not on this machine


@dataclass
class InProcessRouter:
    service: RouterService
    home: Path

    def client(self, caller: tuple[str, int] = LOOPBACK) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=create_app(self.service), client=caller)
        return httpx.AsyncClient(transport=transport, base_url="http://router")


@pytest.fixture
async def router(tmp_path: Path, database_url: str) -> AsyncIterator[InProcessRouter]:
    settings = RouterSettings(
        home=tmp_path, allow_cpu_nodes=True, auto_distribute="none", database_url=database_url
    )
    service = await RouterService.open(settings)
    await service.start()  # ASGITransport runs no lifespan
    try:
        yield InProcessRouter(service, tmp_path)
    finally:
        await service.close()
