"""Images given by URL, fetched by the router for local vision models.

A node takes images inline only (data URLs): it should not reach out to the internet for a
client, and llama.cpp's own fetching is not bounded by llmlb's limits. So before a request
with ``image_url`` parts that are http(s) URLs goes to a node, the router fetches each one
and puts it inline: at most ``max_image_bytes`` each, an ``image/*`` content type, within
``IMAGE_FETCH_SECONDS``, at most ``MAX_REDIRECTS`` redirects. An address on this machine or
a private network (loopback, RFC 1918, link-local, unique-local, the cloud metadata address)
is refused, so a client cannot make the router read what only it can reach, unless the
operator allows it (``image_fetch_private``). Clouds take URLs themselves and are not served
from here.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import socket
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
import orjson

from llmlb.common.errors import BadRequest, PayloadTooLarge

IMAGE_FETCH_SECONDS = 10.0
MAX_REDIRECTS = 3
MAX_FETCHED_IMAGES = 16
# What one request's images may come to together, in max_image_bytes.
MAX_IMAGES_BYTES_FACTOR = 4
FETCHES_AT_ONCE = 16  # requests whose images are being fetched at once, over all clients


def _image_parts(body: dict[str, Any]) -> list[dict[str, Any]]:
    """A chat request's well-formed ``image_url`` parts (others are the node's to refuse)."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return []
    return [
        part
        for message in messages if isinstance(message, dict)
        and isinstance(message.get("content"), list)
        for part in message["content"] if isinstance(part, dict)
        and part.get("type") == "image_url" and isinstance(part.get("image_url"), dict)
        and isinstance(part["image_url"].get("url"), str)
    ]  # fmt: skip


def image_urls(body: dict[str, Any]) -> list[str]:
    """The http(s) URLs of a chat request's ``image_url`` parts."""
    return [part["image_url"]["url"] for part in _image_parts(body)
            if part["image_url"]["url"].startswith(("http://", "https://"))]  # fmt: skip


class ImageFetcher:
    def __init__(self, session: aiohttp.ClientSession, limit: int, private: bool) -> None:
        self._session = session
        self._limit = limit
        self._private = private
        self._slots = asyncio.Semaphore(FETCHES_AT_ONCE)

    async def inline(self, raw: bytes) -> bytes:
        """The request with each http(s) image as a data URL (the same bytes when it has
        none)."""
        body = orjson.loads(raw)
        urls = image_urls(body)
        if not urls:
            return raw
        unique = list(dict.fromkeys(urls))
        if len(unique) > MAX_FETCHED_IMAGES:
            raise BadRequest(f"at most {MAX_FETCHED_IMAGES} images by URL a request",
                             param="messages")  # fmt: skip
        async with self._slots:  # (the router holds what it fetches: bounded over requests)
            images = await asyncio.gather(*(self._fetch(url) for url in unique))
        if sum(len(image) for image in images) > self._limit * MAX_IMAGES_BYTES_FACTOR:
            raise PayloadTooLarge("the images of this request are larger than "
                                  f"{self._limit * MAX_IMAGES_BYTES_FACTOR} bytes together",
                                  param="messages")  # fmt: skip
        fetched = dict(zip(unique, images, strict=True))
        for part in _image_parts(body):
            url = part["image_url"]["url"]
            if url in fetched:
                part["image_url"] = {**part["image_url"], "url": fetched[url]}
        return orjson.dumps(body)

    async def _fetch(self, url: str) -> str:
        for _ in range(MAX_REDIRECTS + 1):
            await self._check_address(url)
            try:
                async with (
                    asyncio.timeout(IMAGE_FETCH_SECONDS),
                    self._session.get(
                        url, allow_redirects=False, headers={"accept": "image/*"}
                    ) as response,
                ):
                    if response.status in (301, 302, 303, 307, 308):
                        try:
                            url = urljoin(url, response.headers.get("location", ""))
                        except ValueError:
                            raise BadRequest(f"the image at {_shown(url)} redirects nowhere",
                                             param="messages") from None  # fmt: skip
                        continue
                    if response.status != 200:
                        raise BadRequest(f"the image at {_shown(url)} answered {response.status}",
                                         param="messages")  # fmt: skip
                    kind = response.headers.get("content-type", "").split(";")[0].strip()
                    if not kind.startswith("image/"):
                        what = kind[:40] or "no type"
                        raise BadRequest(f"{_shown(url)} is not an image ({what})",
                                         param="messages")  # fmt: skip
                    data = await self._bounded(response, url)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise BadRequest(f"the image at {_shown(url)} could not be fetched "
                                 f"({type(exc).__name__})", param="messages") from exc  # fmt: skip
            return f"data:{kind};base64,{base64.b64encode(data).decode()}"
        raise BadRequest(f"the image at {_shown(url)} redirects more than {MAX_REDIRECTS} times",
                         param="messages")  # fmt: skip

    async def _bounded(self, response: aiohttp.ClientResponse, url: str) -> bytes:
        parts, size = [], 0
        async for chunk in response.content.iter_any():
            size += len(chunk)
            if size > self._limit:
                raise PayloadTooLarge(f"the image at {_shown(url)} is larger than {self._limit} "
                                      "bytes", param="messages")  # fmt: skip
            parts.append(chunk)
        return b"".join(parts)

    async def _check_address(self, url: str) -> None:
        """Refuse a URL whose host is, or resolves to, a private or local address."""
        try:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise BadRequest(f"not a URL: {_shown(url)}", param="messages") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BadRequest(f"an image URL must be http(s): {_shown(url)}", param="messages")
        if self._private:
            return
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                parts.hostname, port, type=socket.SOCK_STREAM
            )
        except (OSError, UnicodeError) as exc:
            raise BadRequest(f"the image's host {parts.hostname[:100]!r} is unknown",
                             param="messages") from exc  # fmt: skip
        for info in infos:
            if not is_public(str(info[4][0])):
                raise BadRequest(
                    f"the image at {_shown(url)} is on a private or local address; the router "
                    "fetches only public ones (image_fetch_private allows others)",
                    param="messages", code="image_address_refused",
                )  # fmt: skip


class PublicResolver(aiohttp.ThreadedResolver):
    """Resolves names to public addresses only: checked again when the connection is made,
    so a name that resolved to a public address for the check and to a private one a moment
    later (DNS rebinding) is still refused."""

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[Any]:  # fmt: skip
        found = await super().resolve(host, port, family)
        if any(not is_public(entry["host"]) for entry in found):
            raise OSError(f"{host} resolves to a private or local address")
        return found


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def is_public(text: str) -> bool:
    """Whether an address is public, and so is any IPv4 address it carries (IPv4-mapped and
    -compatible, 6to4, Teredo, NAT64: ways to reach a private IPv4 host through IPv6)."""
    address = ipaddress.ip_address(text.split("%", 1)[0])
    if not address.is_global:
        return False
    if isinstance(address, ipaddress.IPv6Address):
        carried = [address.ipv4_mapped, address.sixtofour]
        if address.teredo is not None:
            carried.append(address.teredo[1])
        if address in _NAT64 or int(address) >> 32 == 0:  # NAT64, IPv4-compatible (::a.b.c.d)
            carried.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        return all(v4 is None or v4.is_global for v4 in carried)
    return True


def _shown(url: str) -> str:
    return repr(url[:100])
