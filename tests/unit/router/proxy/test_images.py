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
from llmlb.router.proxy.images import ImageFetcher, image_urls
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
