"""The router's model store: the catalog, files on the router, origin pulls, blobs for nodes.

``GET /v0/models/blob/{name}`` serves a held file with HTTP Range (the web layer uses
Starlette's FileResponse: sendfile, no whole-file reads). For a catalog model the router does
not hold yet, the same URL pulls it through: the router starts one origin download (shared
by every node that asks meanwhile) and streams the file to each of them as it grows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp

from llmlb.common.errors import BadRequest, ModelNotSupported, UpstreamFailed
from llmlb.common.names import validate_name
from llmlb.models.catalog import Catalog, CatalogEntry, serving_metadata
from llmlb.models.download import Downloads, fetch_files
from llmlb.models.origins import install_package, origin_files
from llmlb.models.partial import PARTIAL_SUFFIX, partial_path
from llmlb.models.progress import Progress
from llmlb.models.store import PROJECTOR_FILE, ModelStore, StoredModel, part_file

log = logging.getLogger(__name__)

READ_SIZE = 1 << 20


@dataclass
class BlobStream:
    """A pull-through answer: bytes from ``start`` of a file still being downloaded."""

    total: int
    start: int
    sha256: str | None
    chunks: AsyncGenerator[bytes, None]


class RouterModels:
    def __init__(self, home: Path, catalog: Catalog, session: aiohttp.ClientSession) -> None:
        self.catalog = catalog
        self.store = ModelStore(home / "models")
        self.downloads = Downloads()
        self._session = session

    def canonical(self, name: str) -> str:
        """The store name of a model as a user typed it (an alias or ``model:tag``)."""
        return validate_name(self.catalog.resolve(name), name)

    def entry(self, name: str) -> CatalogEntry:
        entry = self.catalog.get(self.canonical(name))
        if entry is None:
            raise ModelNotSupported(
                f"model {name!r} is not supported: it is not in the catalog", param="model"
            )
        return entry

    def listing(self, base_url: str) -> list[dict[str, Any]]:
        """The catalog as nodes see it, with the blob URL where the router holds the file."""
        held = {m.name: m for m in self.store.list()}
        rows = []
        for entry in self.catalog.entries():
            stored = held.get(entry.name)
            rows.append({
                **entry.public(),
                "on_router": stored is not None,
                "blob_url": f"{base_url}/v0/models/blob/{entry.name}",
                "sha256": entry.sha256 or (stored.sha256 if stored else None),
            })  # fmt: skip
        for name, stored in held.items():
            if name not in self.catalog:
                rows.append({"name": name, "size_bytes": stored.size_bytes,
                             "sha256": stored.sha256, "on_router": True,
                             "blob_url": f"{base_url}/v0/models/blob/{name}"})  # fmt: skip
                if stored.parts:
                    rows[-1]["parts"] = [
                        {"file": part.name, "size_bytes": part.stat().st_size}
                        for part in stored.parts
                    ]
        return rows

    def pull(self, name: str) -> asyncio.Task[StoredModel]:
        """Fetch a catalog model from its origin into the router's store (single-flight)."""
        entry = self.entry(name)
        name = entry.name

        async def run(progress: Progress) -> StoredModel:
            existing = self.store.get(name)
            if existing is not None:
                return existing
            if entry.origin.package is not None:
                await install_package(self.store, entry, progress)
            else:
                await fetch_files(self._session, self.store, name, origin_files(entry), progress)
            return self.store.update_metadata(name, serving_metadata(entry.public()))

        return self.downloads.start(name, run)

    def held(self, name: str) -> StoredModel | None:
        return self.store.get(self.canonical(name))

    def part(self, name: str, index: int) -> tuple[Path, int, str | None]:
        """Part ``index`` (from 1) of a split model: where it is or will be on the router,
        its size and sha256. BadRequest for a model without such a part."""
        name = self.canonical(name)
        entry = self.catalog.get(name)
        stored = self.store.get(name)
        if entry is not None and entry.parts is not None:
            if not 1 <= index <= len(entry.parts):
                raise BadRequest(f"model {name!r} has parts 1 to {len(entry.parts)}", param="part")
            part = entry.parts[index - 1]
            path = self.store.folder(name) / part_file(index, len(entry.parts))
            return path, part.size_bytes, part.sha256
        if stored is not None and stored.parts:
            if not 1 <= index <= len(stored.parts):
                raise BadRequest(f"model {name!r} has parts 1 to {len(stored.parts)}", param="part")
            path = stored.parts[index - 1]
            return path, path.stat().st_size, None
        raise BadRequest(f"model {name!r} is not a split model", param="part")

    def is_split(self, name: str) -> bool:
        entry = self.catalog.get(name)
        stored = self.store.get(name)
        return bool((entry is not None and entry.parts) or (stored is not None and stored.parts))

    async def part_through(self, name: str, index: int, start: int) -> BlobStream:
        """Stream part ``index`` of a split model the router is still fetching, from byte
        ``start``: the parts arrive in order, and a node tails each one as it grows."""
        name = self.canonical(name)
        return await self._file_through(name, self.part(name, index), start, f"part {index}")

    async def _file_through(self, name: str, file: tuple[Path, int, str | None], start: int,
                            what: str) -> BlobStream:  # fmt: skip
        """Stream one file of a model the router is still fetching (a part, the projector:
        ``file`` is where it lands, its size and sha256), from byte ``start``, once its
        download has begun."""
        path, total, sha256 = file
        task = self.pull(name)
        progress = self.downloads.progress[name]
        partial = partial_path(self.store, name, path.name)
        while not path.is_file() and not partial.is_file() and not task.done():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await progress.changed.wait()
        if task.done():
            task.result()  # raises the download's error
        source = path if path.is_file() else partial
        if not source.is_file():
            raise UpstreamFailed(f"the router's download of {name!r} has no {what}")
        if start >= total:
            raise UpstreamFailed(f"range start {start} is past the end of the {what} ({total})")
        return BlobStream(total, start, sha256, self._tail(source, start, total, task, progress))

    def projector(self, name: str) -> tuple[Path, int, str | None]:
        """A vision model's projector: where it is or will be on the router, its size and
        sha256. BadRequest for a model without one."""
        name = self.canonical(name)
        entry = self.catalog.get(name)
        path = self.store.folder(name) / PROJECTOR_FILE
        if entry is not None and entry.mmproj is not None:
            return path, entry.mmproj.size_bytes, entry.mmproj.sha256
        if path.is_file():
            return path, path.stat().st_size, None
        raise BadRequest(f"model {name!r} has no projector (mmproj)", param="file")

    async def projector_through(self, name: str, start: int) -> BlobStream:
        """Stream the projector of a model the router is still fetching (its first file)."""
        name = self.canonical(name)
        return await self._file_through(name, self.projector(name), start, "projector")

    async def pull_through(self, name: str, start: int) -> BlobStream:
        """Stream a model the router is still fetching, from byte ``start``."""
        name = self.canonical(name)
        task = self.pull(name)
        progress = self.downloads.progress[name]
        entry = self.catalog.get(name)
        if entry is not None and entry.origin.package is not None:
            # A package is assembled locally (seconds) into a scratch folder, not written
            # through a .partial file that could be tailed: wait for the finished file.
            await asyncio.shield(task)
        while progress.bytes_total is None and not task.done():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await progress.changed.wait()
        if task.done():
            stored = task.result()  # raises the download's error
            total = stored.size_bytes
            path = stored.path
        else:
            # (The progress counts a projector too: the model file's own size, where known.)
            total = (entry.size_bytes if entry is not None and entry.mmproj is not None
                     else None) or progress.bytes_total or 0  # fmt: skip
            path = partial_path(self.store, name)
        if start >= total > 0:
            raise UpstreamFailed(f"range start {start} is past the end of {name!r} ({total})")
        return BlobStream(total, start, entry.sha256 if entry else None,
                          self._tail(path, start, total, task, progress))  # fmt: skip

    async def _tail(
        self,
        path: Path,
        start: int,
        total: int,
        task: asyncio.Task[StoredModel],
        progress: Progress,
    ) -> AsyncGenerator[bytes, None]:
        # The descriptor stays valid when the finished file is renamed into place.
        stream = await open_growing(path, task)
        try:
            position = start
            stream.seek(position)
            while position < total:
                data = await asyncio.to_thread(stream.read, min(READ_SIZE, total - position))
                if data:
                    position += len(data)
                    yield data
                    continue
                if task.done():
                    if task.cancelled() or task.exception() is not None:
                        raise UpstreamFailed(f"the origin download of {path.parent.name} failed")
                    continue  # finished: the rest is on disk now
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await progress.changed.wait()
        finally:
            stream.close()


async def open_growing(path: Path, task: asyncio.Task[StoredModel]) -> BinaryIO:
    """``path`` opened for reading. Where it is a download's ``.partial`` file that is gone,
    the download ended since it was chosen: its finished file (renamed into place), or the
    download's failure. (Opening the vanished ``.partial`` was a 500 in the middle of a 206.)"""
    try:
        return await asyncio.to_thread(path.open, "rb")
    except FileNotFoundError:
        if not path.name.endswith(PARTIAL_SUFFIX):
            raise
    await asyncio.wait([task])
    if task.cancelled() or task.exception() is not None:
        raise UpstreamFailed(f"the origin download of {path.parent.name} failed")
    finished = path.with_name(path.name.removesuffix(PARTIAL_SUFFIX))
    return await asyncio.to_thread(finished.open, "rb")
