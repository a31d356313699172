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
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from llmlb.common.errors import CorruptDownload, InsufficientStorage, LlmlbError, UpstreamFailed
from llmlb.models.gguf import GGUF_MAGIC, GGUFError, read_gguf
from llmlb.models.store import MODEL_FILE, ModelStore, StoredModel, sha256_file

log = logging.getLogger(__name__)

CHUNK = 1 << 20
PARTIAL_SUFFIX = ".partial"


@dataclass
class Source:
    """Somewhere a model file can be fetched from over HTTP."""

    label: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Progress:
    model: str
    state: str = "pending"  # pending, downloading, verifying, completed, failed
    source: str = ""
    bytes_done: int = 0
    bytes_total: int | None = None
    speed: float = 0.0  # bytes/s, smoothed
    error: str | None = None
    started_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)  # wall clock, for people
    touched_at: float = field(default_factory=time.monotonic)  # for intervals (clocks jump)
    changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def eta_seconds(self) -> float | None:
        if not self.bytes_total or self.speed <= 0:
            return None
        return max(self.bytes_total - self.bytes_done, 0) / self.speed

    @property
    def percent(self) -> float | None:
        if not self.bytes_total:
            return None
        return round(100.0 * self.bytes_done / self.bytes_total, 1)

    def touch(self) -> None:
        self.updated_at, self.touched_at = time.time(), time.monotonic()
        self.changed.set()
        self.changed = asyncio.Event()

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "state": self.state,
            "source": self.source,
            "bytes_done": self.bytes_done,
            "bytes_total": self.bytes_total,
            "percent": self.percent,
            "speed_bytes_per_s": round(self.speed),
            "eta_seconds": None if self.eta_seconds is None else round(self.eta_seconds, 1),
            "error": self.error,
            "started_at": self.started_at,
            "updated_at": self.updated_at,
        }


@dataclass(frozen=True)
class ModelFile:
    """One file of a model to fetch: its name in the store and where it comes from."""

    target: str  # MODEL_FILE, or a part's name (store.part_file)
    sources: list[Source]
    sha256: str | None = None
    size: int | None = None


def single_file(sources: list[Source], sha256: str | None, size: int | None) -> list[ModelFile]:
    return [ModelFile(MODEL_FILE, sources, sha256, size)]


def partial_path(store: ModelStore, name: str, target: str = MODEL_FILE) -> Path:
    return store.folder(name) / (target + PARTIAL_SUFFIX)


def _disk_full(partial: Path, name: str, total: int) -> InsufficientStorage:
    """The error for a disk that filled up mid-download, once the partial file is gone."""
    written = partial.stat().st_size if partial.exists() else 0
    partial.unlink(missing_ok=True)
    of_total = f" of {total}" if total else ""
    return InsufficientStorage(
        f"the disk holding {partial.parent} filled up while downloading {name!r} "
        f"({written}{of_total} bytes written); the partial file was deleted to free the "
        "disk. Make room and ask again."
    )


def check_space(folder: Path, needed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise InsufficientStorage(
            f"not enough disk space in {folder}: the download needs {needed} more bytes, "
            f"{free} are free"
        )


async def _hash_prefix(path: Path) -> tuple[Any, int]:
    def run() -> tuple[Any, int]:
        digest = hashlib.sha256()
        size = 0
        with path.open("rb") as stream:
            while block := stream.read(8 * CHUNK):
                digest.update(block)
                size += len(block)
        return digest, size

    return await asyncio.to_thread(run)


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
    digest, offset = await _hash_prefix(partial) if partial.exists() else (hashlib.sha256(), 0)
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
                raise _disk_full(partial, name, total) from exc
    await _verify(partial, digest.hexdigest(), file.sha256, progress, source)
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
                window_start, window_bytes = _account(progress, window_start, window_bytes)
        if buffer:
            await asyncio.to_thread(write, buffer)
            progress.bytes_done += buffered
            progress.touch()
            if throttle is not None:
                await throttle.took(buffered)


def _account(progress: Progress, window_start: float, window_bytes: int) -> tuple[float, int]:
    elapsed = time.monotonic() - window_start
    if elapsed >= 0.5:
        rate = window_bytes / elapsed
        progress.speed = rate if progress.speed == 0 else 0.7 * progress.speed + 0.3 * rate
        window_start, window_bytes = time.monotonic(), 0
    progress.touch()
    return window_start, window_bytes


class Throttle:
    """Holds one transfer to ``bandwidth`` bytes/s.

    Counts only the bytes of this transfer: a resumed download's earlier bytes were paid
    for by an earlier transfer (counting them made a resume sleep for them again).
    """

    def __init__(self, bandwidth: int) -> None:
        self._bandwidth = bandwidth
        self._started = time.monotonic()
        self._bytes = 0

    async def took(self, size: int) -> None:
        self._bytes += size
        ahead = self._bytes / self._bandwidth - (time.monotonic() - self._started)
        if ahead > 0:
            await asyncio.sleep(ahead)


def _gguf_problem(path: Path) -> str | None:
    """Why ``path`` is not a whole GGUF model, or None when it is."""
    with path.open("rb") as stream:
        if stream.read(4) != GGUF_MAGIC:
            return "is not a GGUF file"
    try:
        read_gguf(path)
    except GGUFError as exc:
        return f"is not a whole GGUF model ({exc})"
    return None


async def _verify(
    partial: Path, actual: str, sha256: str | None, progress: Progress, source: Source
) -> None:
    """The downloaded file is what was asked for, else deleted and CorruptDownload."""
    progress.state = "verifying"
    progress.touch()
    problem = None
    if sha256 and actual != sha256:
        problem = f"has sha256 {actual}, expected {sha256}"
    else:
        # Without a catalog sha256 (the hub's own figure is recorded below) the file must at
        # least be a whole GGUF: a header that parses and tensor data that fits in the file.
        problem = await asyncio.to_thread(_gguf_problem, partial)
    if problem:
        partial.unlink(missing_ok=True)  # noqa: ASYNC240 (one unlink)
        raise CorruptDownload(f"the file from {source.label} {problem}; it was deleted")


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


async def download_with_retries(
    session: aiohttp.ClientSession,
    store: ModelStore,
    name: str,
    sources: list[Source],
    progress: Progress,
    *,
    sha256: str | None,
    size_hint: int | None,
    bandwidth: int | None = None,
    attempts: int = 3,
) -> StoredModel:
    """A single-file model from the first source that works (``fetch_files``)."""
    return await fetch_files(
        session, store, name, single_file(sources, sha256, size_hint), progress,
        bandwidth=bandwidth, attempts=attempts,
    )  # fmt: skip
