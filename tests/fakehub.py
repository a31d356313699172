"""A loopback stand-in for the Hugging Face hub's file endpoint and repository listing.

``GET|HEAD /{org}/{repo}/resolve/{revision}/{file}`` with the headers huggingface_hub reads
(``ETag`` and ``X-Linked-Etag`` = the file's sha256 in quotes, ``X-Linked-Size``,
``X-Repo-Commit``, ``Content-Length``, ``Accept-Ranges``) and HTTP Range (``bytes=N-`` and
``bytes=N-M``: 206 with ``Content-Range``). Scriptable per file: cut the first transfer after
a fraction of the bytes, throttle, or lie about the length. Counts requests and bytes sent.

``GET /api/models/{org}/{repo}/tree/{revision}?recursive=true`` lists a repository as the hub
does: ``{"type": "file", "oid", "size", "path"}`` with ``"lfs": {"oid": sha256, "size",
"pointerSize"}`` for large files, pages of ``PAGE_SIZE`` linked by ``Link: <...>;
rel="next"``; a repository it does not have is a 401 with ``X-Error-Code: RepoNotFound``, as
the hub answers a caller without a token.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tests.support import ThreadServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"
PAGE_SIZE = 50


@dataclass
class HubFile:
    data: bytes
    cut_at: float | None = None  # the first full transfer stops after this fraction
    bytes_per_second: int | None = None
    declared_length: int | None = None  # lie about Content-Length (a "huge" file)
    cuts_left: int = 1
    hold_at: float | None = None  # the transfer waits after this fraction until released
    released: threading.Event = field(default_factory=threading.Event)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass
class FakeHub:
    files: dict[str, HubFile] = field(default_factory=dict)  # "org/repo/file" -> file
    gets: Counter[str] = field(default_factory=Counter)
    bytes_sent: Counter[str] = field(default_factory=Counter)
    range_starts: dict[str, list[int]] = field(default_factory=dict)
    url: str = ""
    _server: ThreadServer | None = None

    def add(self, repo: str, filename: str, data: bytes | Path, **options: object) -> HubFile:
        raw = data.read_bytes() if isinstance(data, Path) else data
        hub_file = HubFile(raw, **options)  # type: ignore[arg-type]
        self.files[f"{repo}/{filename}"] = hub_file
        return hub_file

    async def _resolve(self, request: Request) -> Response:
        p = request.path_params
        key = f"{p['org']}/{p['repo']}/{p['file']}"
        hub_file = self.files.get(key)
        if hub_file is None:
            return Response("Entry not found", 404, headers={"X-Error-Code": "EntryNotFound"})
        size = len(hub_file.data)
        start, end = 0, size  # end: exclusive
        header = request.headers.get("range", "")
        if header.startswith("bytes="):
            first, _, last = header[6:].partition("-")
            start = int(first)
            end = min(int(last) + 1, size) if last else size
        headers = {
            "etag": f'"{hub_file.sha256}"',
            "x-linked-etag": f'"{hub_file.sha256}"',
            "x-linked-size": str(size),
            "x-repo-commit": COMMIT,
            "accept-ranges": "bytes",
            "content-length": str(hub_file.declared_length or end - start),
        }
        if request.method == "HEAD":
            return Response(b"", 200, headers=headers)
        self.gets[key] += 1
        self.range_starts.setdefault(key, []).append(start)
        status = 200
        if start or end < size:
            status = 206
            headers["content-range"] = f"bytes {start}-{end - 1}/{size}"
        return StreamingResponse(self._body(key, hub_file, start, end), status, headers=headers)

    async def _tree(self, request: Request) -> Response:
        p = request.path_params
        prefix = f"{p['org']}/{p['repo']}/"
        if not any(key.startswith(prefix) for key in self.files):
            return Response(b'{"error":"Repository not found"}', 401,
                            headers={"X-Error-Code": "RepoNotFound"})  # fmt: skip
        items: list[dict[str, Any]] = [
            {"type": "file", "oid": hashlib.sha1(f.data).hexdigest(), "size": len(f.data),
             "path": key[len(prefix):],
             "lfs": {"oid": f.sha256, "size": len(f.data), "pointerSize": 134}}
            for key, f in sorted(self.files.items()) if key.startswith(prefix)
        ]  # fmt: skip
        folders = sorted({i["path"].rsplit("/", 1)[0] for i in items if "/" in i["path"]})
        items += [{"type": "directory", "oid": "0" * 40, "size": 0, "path": f} for f in folders]
        items.append({"type": "file", "oid": "1" * 40, "size": 12, "path": "README.md"})
        start = int(request.query_params.get("cursor", "0"))
        page = items[start : start + PAGE_SIZE]
        headers = {}
        if start + PAGE_SIZE < len(items):
            following = request.url.include_query_params(cursor=start + PAGE_SIZE)
            headers["link"] = f'<{following}>; rel="next"'
        return Response(orjson.dumps(page), headers=headers, media_type="application/json")

    async def _body(
        self, key: str, hub_file: HubFile, start: int, end: int
    ) -> AsyncIterator[bytes]:
        data = hub_file.data
        stop = end
        cut = (
            hub_file.cut_at is not None
            and hub_file.cuts_left > 0
            and start == 0
            and end == len(data)
        )  # (a Range read of its head is not the transfer)
        if cut:
            hub_file.cuts_left -= 1
            stop = int(len(data) * (hub_file.cut_at or 0))
        position = start
        step = 256 * 1024
        began = time.monotonic()
        hold = int(len(data) * hub_file.hold_at) if hub_file.hold_at is not None else None
        while position < stop:
            if hold is not None and position >= hold:
                # The test decides when it goes on (a thread blocked on the event would keep
                # the interpreter from exiting if it never did).
                while not hub_file.released.is_set():  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
                hold = None
            chunk = data[position : min(position + step, stop)]
            position += len(chunk)
            self.bytes_sent[key] += len(chunk)
            yield chunk
            if hub_file.bytes_per_second:
                ahead = (position - start) / hub_file.bytes_per_second - (time.monotonic() - began)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        if cut or hub_file.declared_length:
            raise ConnectionResetError("fake hub cuts the transfer")

    def start(self) -> FakeHub:
        route = "/{org}/{repo}/resolve/{revision}/{file:path}"
        tree = "/api/models/{org}/{repo}/tree/{revision}"
        app = Starlette(routes=[Route(route, self._resolve, methods=["GET", "HEAD"]),
                                Route(tree, self._tree, methods=["GET"])])  # fmt: skip
        self._server = ThreadServer(app)
        self.url = self._server.url
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()


def hub_entry(name: str, repo: str, data: bytes, **extra: Any) -> dict[str, Any]:
    """A catalog entry for ``data`` served by the fake hub as ``<repo>/model.gguf``."""
    return {
        "name": name,
        "origin": {"hub": {"repo": repo, "file": "model.gguf", "revision": "main"}},
        "size_bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "required_memory_bytes": 10_000_000,
        **extra,
    }
