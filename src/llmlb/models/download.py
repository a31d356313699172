"""Resumable, verified model downloads with live progress; one per model at a time.

A download writes ``<store>/<name>/model.gguf.partial``, resumes it with an HTTP Range
request after an interruption or a restart, hashes while it writes (the partial prefix is
hashed once on resume), checks the GGUF magic and the sha256, and only then renames the file
into place. A corrupt result is deleted; the caller moves on to its next source.

A disk that fills up during a download (another writer took the room it had when it
started) ends it at once with InsufficientStorage, and the partial file is deleted: a disk
left full breaks everything else that writes to it, and the bytes would need the same room
again anyway.

A split model downloads as a set (``ModelFile`` per part): each part the same way, under its
own ``.partial``, verified against its own sha256. Parts already in place are skipped, so a
restart resumes at the part it was on; one progress counts the bytes of all parts.

This module is the transfer and the single flight; the partial file's own checks are in
``models/partial.py``, the progress and the bandwidth cap in ``models/progress.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from llmlb.common.errors import CorruptDownload, InsufficientStorage, LlmlbError, UpstreamFailed
from llmlb.models.partial import check_space, disk_full, hash_prefix, partial_path, verify
from llmlb.models.progress import Progress, Throttle, account_speed
from llmlb.models.store import MODEL_FILE, PROJECTOR_FILE, ModelStore, StoredModel, sha256_file

log = logging.getLogger(__name__)

CHUNK = 1 << 20


@dataclass
class Source:
    """Somewhere a model file can be fetched from over HTTP."""

    label: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelFile:
    """One file of a model to fetch: its name in the store and where it comes from."""

    target: str  # MODEL_FILE, or a part's name (store.part_file)
    sources: list[Source]
    sha256: str | None = None
    size: int | None = None


def single_file(sources: list[Source], sha256: str | None, size: int | None) -> list[ModelFile]:
    return [ModelFile(MODEL_FILE, sources, sha256, size)]


async def download(
    session: aiohttp.ClientSession,
    store: ModelStore,
    name: str,
    source: Source,
    progress: Progress,
    *,
    sha256: str | None,
    size_hint: int | None,
    bandwidth: int | None = None,
) -> StoredModel:
    """One single-file model from one source (see ``fetch_file``), recorded in the store."""
    digest = await fetch_file(
        session, store, name, ModelFile(MODEL_FILE, [source], sha256, size_hint), source,
        progress, bandwidth=bandwidth,
    )  # fmt: skip
    return _record(store, name, [(MODEL_FILE, digest)], source.label)


async def fetch_file(
    session: aiohttp.ClientSession,
    store: ModelStore,
    name: str,
    file: ModelFile,
    source: Source,
    progress: Progress,
    *,
    bandwidth: int | None = None,
    base: int = 0,
) -> str:
    """One file of a model from one source, resumed from its partial file, verified and
    renamed into place; its sha256. ``base``: bytes of the model's earlier parts, counted in
    ``progress``. Raises on failure (the partial stays, unless it proved corrupt)."""
    partial = partial_path(store, name, file.target)
    partial.parent.mkdir(parents=True, exist_ok=True)
    digest, offset = await hash_prefix(partial) if partial.exists() else (hashlib.sha256(), 0)
    headers = dict(source.headers)
    if offset:
        headers["Range"] = f"bytes={offset}-"
    progress.state, progress.source = "downloading", source.label
    async with session.get(source.url, headers=headers) as response:
        if response.status == 416 and offset:  # the partial is already complete
            pass
        elif response.status not in (200, 206):
            text = (await response.text())[:200]
            raise UpstreamFailed(f"{source.label} answered {response.status}: {text}")
        else:
            if response.status == 200 and offset:  # no resume support: start again
                digest, offset = hashlib.sha256(), 0
            length = response.content_length
            total = offset + length if length is not None else (file.size or 0)
            progress.bytes_total = max(progress.bytes_total or 0, base + total) or None
            progress.bytes_done = base + offset
            if total:
                check_space(partial.parent, total - offset)
            try:
                await _receive(response, partial, offset, digest, progress, bandwidth)
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                raise disk_full(partial, name, total) from exc
    await verify(partial, digest.hexdigest(), file.sha256, progress, source.label)
    os.replace(partial, store.folder(name) / file.target)
    return str(digest.hexdigest())


async def fetch_files(
    session: aiohttp.ClientSession,
    store: ModelStore,
    name: str,
    files: list[ModelFile],
    progress: Progress,
    *,
    bandwidth: int | None = None,
    attempts: int = 3,
) -> StoredModel:
    """Every file of a model (each source in turn, each a few times with backoff), then the
    model recorded in the store. Files already in place are kept. Errors name every source."""
    folder = store.folder(name)
    sizes = [file.size or 0 for file in files]
    if all(sizes):
        progress.bytes_total = sum(sizes)
    digests: list[tuple[str, str]] = []
    labels: list[str] = []
    base = 0
    for file in files:
        done = folder / file.target
        if done.is_file() and file.size and done.stat().st_size != file.size:
            log.warning("%s of %s is not the expected size (another version?); fetching it "
                        "again", file.target, name)  # fmt: skip
            done.unlink()
        if done.is_file():  # verified before it got this name
            known = file.sha256
            if known is None:
                known = await asyncio.to_thread(sha256_file, done)
            digests.append((file.target, known))
            base += done.stat().st_size
            continue
        digest, label = await _fetch_with_retries(
            session, store, name, file, progress, bandwidth, attempts, base
        )
        digests.append((file.target, digest))
        labels.append(label)
        base += done.stat().st_size
    return _record(store, name, digests, labels[-1] if labels else "store")


async def _fetch_with_retries(
    session: aiohttp.ClientSession,
    store: ModelStore,
    name: str,
    file: ModelFile,
    progress: Progress,
    bandwidth: int | None,
    attempts: int,
    base: int,
) -> tuple[str, str]:
    failures: list[str] = []
    for source in file.sources:
        for attempt in range(1, attempts + 1):
            try:
                digest = await fetch_file(
                    session, store, name, file, source, progress, bandwidth=bandwidth, base=base
                )
                return digest, source.label
            except InsufficientStorage:
                raise
            except CorruptDownload as exc:
                failures.append(exc.message)
                break  # the same source would send the same bytes: next source
            except (aiohttp.ClientError, TimeoutError, UpstreamFailed, OSError) as exc:
                message = (
                    exc.message if isinstance(exc, LlmlbError) else f"{type(exc).__name__}: {exc}"
                )
                log.warning("download of %s (%s) from %s failed (attempt %d): %s",
                            name, file.target, source.label, attempt, message)  # fmt: skip
                if attempt == attempts or (isinstance(exc, UpstreamFailed) and "404" in message):
                    failures.append(f"{source.label}: {message}")
                    break
                await asyncio.sleep(min(0.5 * 2 ** (attempt - 1), 5.0))
    raise UpstreamFailed(f"could not download {name!r}: " + "; ".join(failures or ["no source"]))


def _record(
    store: ModelStore, name: str, digests: list[tuple[str, str]], source: str
) -> StoredModel:
    """metadata.json for a model whose files are all in place."""
    folder = store.folder(name)
    projector = [(t, d) for t, d in digests if t == PROJECTOR_FILE]
    digests = [(t, d) for t, d in digests if t != PROJECTOR_FILE]
    meta: dict[str, Any] = {
        "name": name,
        "size_bytes": sum((folder / target).stat().st_size for target, _ in digests),
        "source": source,
        "downloaded_at": time.time(),
    }
    if len(digests) == 1:
        meta["sha256"] = digests[0][1]
    else:
        meta["parts"] = [{"file": target, "sha256": digest} for target, digest in digests]
    if projector:
        meta["projector"] = {"file": PROJECTOR_FILE, "sha256": projector[0][1]}
    store.write_metadata(name, meta)
    stored = store.get(name)
    assert stored is not None, f"{name}: files missing after the download"
    return stored


async def _receive(
    response: aiohttp.ClientResponse,
    partial: Path,
    offset: int,
    digest: Any,
    progress: Progress,
    bandwidth: int | None,
) -> None:
    mode = "r+b" if offset else "wb"
    window_start, window_bytes = time.monotonic(), 0
    throttle = Throttle(bandwidth) if bandwidth else None
    with partial.open(mode) as stream:
        if offset:
            stream.truncate(offset)
        stream.seek(offset)
        buffer: list[bytes] = []
        buffered = 0

        def write(blocks: list[bytes]) -> None:
            for block in blocks:
                stream.write(block)
                digest.update(block)

        # Whatever has arrived, in batches of a few MiB: the thread writes and hashes one
        # batch while the event loop receives the next.
        async for block in response.content.iter_chunked(CHUNK):
            buffer.append(block)
            buffered += len(block)
            if buffered >= 4 * CHUNK:
                await asyncio.to_thread(write, buffer)
                progress.bytes_done += buffered
                window_bytes += buffered
                if throttle is not None:
                    await throttle.took(buffered)
                buffer, buffered = [], 0
                window_start, window_bytes = account_speed(progress, window_start, window_bytes)
        if buffer:
            await asyncio.to_thread(write, buffer)
            progress.bytes_done += buffered
            progress.touch()
            if throttle is not None:
                await throttle.took(buffered)


class Downloads:
    """Single-flight downloads per model: concurrent callers share one transfer."""

    def __init__(self) -> None:
        self.progress: dict[str, Progress] = {}
        self._tasks: dict[str, asyncio.Task[StoredModel]] = {}

    def active(self, name: str) -> asyncio.Task[StoredModel] | None:
        task = self._tasks.get(name)
        return task if task is not None and not task.done() else None

    def start(
        self, name: str, run: Callable[[Progress], Awaitable[StoredModel]]
    ) -> asyncio.Task[StoredModel]:
        """The running download of ``name``, or a new one made by ``run``."""
        current = self.active(name)
        if current is not None:
            return current
        progress = Progress(name)
        self.progress[name] = progress

        async def guarded() -> StoredModel:
            try:
                stored = await run(progress)
            except asyncio.CancelledError:
                progress.state, progress.error = "failed", "cancelled"
                progress.touch()
                raise
            except Exception as exc:
                progress.state = "failed"
                progress.error = (
                    exc.message
                    if isinstance(exc, LlmlbError)
                    else (
                        str(exc) or type(exc).__name__  # never an empty reason
                    )
                )
                progress.touch()
                log.warning("download of %s failed: %s", name, progress.error)
                raise
            progress.state = "completed"
            progress.bytes_done = progress.bytes_total = stored.size_bytes
            progress.touch()
            log.info("downloaded %s (%d bytes) from %s", name, stored.size_bytes, progress.source)
            return stored

        task = asyncio.create_task(guarded())
        task.add_done_callback(_retrieve)
        self._tasks[name] = task
        return task

    async def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            with contextlib.suppress(BaseException):
                await task


def _retrieve(task: asyncio.Task[StoredModel]) -> None:
    if not task.cancelled():
        task.exception()
