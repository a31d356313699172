"""The client-disconnect watch: it cancels the work when the client leaves, and leaves no
garbage cycles behind (a cycle per request kept each request's objects until a full
collection: 15 MiB more resident and a third more p99 at 64 clients)."""

from __future__ import annotations

import asyncio
import gc

import pytest

from llmlb.common.departure import Departure, until_gone
from llmlb.common.errors import ClientClosedRequest


class Client:
    """An ASGI ``receive`` whose client leaves when told to."""

    def __init__(self) -> None:
        self.left = asyncio.Event()

    async def receive(self) -> dict[str, str]:
        await self.left.wait()
        return {"type": "http.disconnect"}


async def test_work_is_cancelled_when_the_client_leaves() -> None:
    client = Client()
    asyncio.get_running_loop().call_later(0.01, client.left.set)
    with pytest.raises(ClientClosedRequest):
        await until_gone(client.receive, asyncio.sleep(30))


async def test_one_watch_guards_two_phases_and_refuses_work_after_the_client_left() -> None:
    client = Client()
    departure = Departure(client.receive)
    try:
        assert await departure.guard(asyncio.sleep(0, "node answered")) == "node answered"
        asyncio.get_running_loop().call_later(0.01, client.left.set)
        with pytest.raises(ClientClosedRequest):
            await departure.guard(asyncio.sleep(30))  # the relay, cut short
        with pytest.raises(ClientClosedRequest):
            await departure.guard(asyncio.sleep(0))
    finally:
        departure.close()


async def test_a_finished_request_leaves_no_garbage_cycles() -> None:
    for _ in range(3):  # warm up whatever asyncio caches
        await until_gone(Client().receive, asyncio.sleep(0))
    await asyncio.sleep(0.01)
    gc.collect()
    gc.disable()
    try:
        for _ in range(50):
            await until_gone(Client().receive, asyncio.sleep(0))
        await asyncio.sleep(0.01)  # the watchers' cancellations are delivered
        assert gc.collect() == 0
    finally:
        gc.enable()
