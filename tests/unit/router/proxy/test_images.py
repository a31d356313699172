"""Images by URL, put inline by the router for nodes: bounded, images only, redirects
followed a few times, private addresses refused unless allowed (a real loopback server)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterator

import aiohttp
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from llmlb.common.errors import BadRequest, PayloadTooLarge
from llmlb.router.proxy.images import ImageFetcher, image_urls, is_public
from tests.support import ThreadServer
from tests.vision import tiny_png


async def _picture(request: Request) -> Response:
    return Response(tiny_png(), media_type="image/png")


async def _loop(request: Request) -> Response:
    return RedirectResponse("/loop")


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadServer]:
    app = Starlette(routes=[
        Route("/cat.png", _picture),
        Route("/moved", lambda r: RedirectResponse("/cat.png")),
        Route("/loop", _loop),
        Route("/page", lambda r: Response("<html>", media_type="text/html")),
        Route("/big.png", lambda r: Response(b"x" * 5000, media_type="image/png")),
    ])  # fmt: skip
    running = ThreadServer(app)
    yield running
    running.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as opened:
        yield opened


def request(*urls: str) -> bytes:
    parts = [{"type": "image_url", "image_url": {"url": url}} for url in urls]
    return orjson.dumps({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what?"}, *parts]}]})  # fmt: skip


async def test_images_by_url_are_put_inline(server: ThreadServer,
                                            session: aiohttp.ClientSession) -> None:  # fmt: skip
    fetcher = ImageFetcher(session, 4096, private=True)
    inlined = orjson.loads(await fetcher.inline(request(f"{server.url}/cat.png",
                                                        f"{server.url}/moved")))  # fmt: skip
    parts = inlined["messages"][0]["content"]
    expected = "data:image/png;base64," + base64.b64encode(tiny_png()).decode()
    assert [p["image_url"]["url"] for p in parts[1:]] == [expected, expected]
    assert image_urls(inlined) == []
    unchanged = request("data:image/png;base64,AAAA")
    assert await fetcher.inline(unchanged) is unchanged  # nothing to fetch: the same bytes


@pytest.mark.parametrize(
    ("path", "error", "message"),
    [("/page", BadRequest, "is not an image"), ("/big.png", PayloadTooLarge, "larger than"),
     ("/loop", BadRequest, "redirects more than"), ("/nothing.png", BadRequest, "answered 404")],
)  # fmt: skip
async def test_what_is_not_a_small_image_is_a_4xx(
    server: ThreadServer, session: aiohttp.ClientSession, path: str, error: type[Exception],
    message: str,
) -> None:  # fmt: skip
    with pytest.raises(error, match=message):
        await ImageFetcher(session, 4096, private=True).inline(request(server.url + path))


async def test_a_private_address_is_refused_unless_allowed(
    server: ThreadServer, session: aiohttp.ClientSession
) -> None:
    for url in (f"{server.url}/cat.png", "http://localhost:9/x.png", "http://169.254.169.254/x",
                "http://[::1]:9/x.png", "http://10.1.2.3/x.png"):  # fmt: skip
        with pytest.raises(BadRequest, match="private or local address"):
            await ImageFetcher(session, 4096, private=False).inline(request(url))


@pytest.mark.parametrize(
    ("address", "public"),
    [("8.8.8.8", True), ("2001:4860:4860::8888", True), ("10.0.0.1", False), ("::1", False),
     ("0.0.0.0", False), ("169.254.169.254", False), ("::ffff:10.0.0.1", False),
     ("64:ff9b::a00:1", False), ("2002:a00:1::", False), ("::127.0.0.1", False),
     ("2001:0:4136:e378:8000:63bf:f5ff:fffe", False), ("fe80::1%eth0", False)],
)  # fmt: skip
def test_addresses_that_reach_a_private_host_another_way_are_not_public(
    address: str, public: bool
) -> None:
    assert is_public(address) is public


async def test_odd_image_parts_are_left_to_the_node_not_a_500(
    server: ThreadServer, session: aiohttp.ClientSession
) -> None:
    fetcher = ImageFetcher(session, 4096, private=True)
    cat = {"type": "image_url", "image_url": {"url": f"{server.url}/cat.png"}}
    body = {"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": "not a dict"},
        {"type": "image_url", "image_url": {"url": ["a", "list"]}},
        cat, cat, "text"]}]}  # fmt: skip
    inlined = orjson.loads(await fetcher.inline(orjson.dumps(body)))
    parts = inlined["messages"][0]["content"]
    assert parts[0]["image_url"] == "not a dict" and parts[1]["image_url"]["url"] == ["a", "list"]
    assert (
        parts[2]["image_url"]["url"].startswith("data:image/png;base64,") and parts[2] == parts[3]
    )
    for url in ("http://[::1/x.png", "http://host:99999/x.png"):
        with pytest.raises(BadRequest, match="not a URL"):
            await ImageFetcher(session, 4096, private=False).inline(request(url))
