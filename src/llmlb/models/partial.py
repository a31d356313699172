"""The partial file a download writes: where it lives, the hash of what it already holds
(for a resume), the room the rest needs, the error for a disk that filled up, and the check
it passes before it is renamed into place."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from pathlib import Path
from typing import Any

from llmlb.common.errors import CorruptDownload, InsufficientStorage
from llmlb.models.gguf import GGUF_MAGIC, GGUFError, read_gguf
from llmlb.models.progress import Progress
from llmlb.models.store import MODEL_FILE, ModelStore

PARTIAL_SUFFIX = ".partial"
_HASH_BLOCK = 8 << 20


def partial_path(store: ModelStore, name: str, target: str = MODEL_FILE) -> Path:
    return store.folder(name) / (target + PARTIAL_SUFFIX)


def disk_full(partial: Path, name: str, total: int) -> InsufficientStorage:
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


async def hash_prefix(path: Path) -> tuple[Any, int]:
    def run() -> tuple[Any, int]:
        digest = hashlib.sha256()
        size = 0
        with path.open("rb") as stream:
            while block := stream.read(_HASH_BLOCK):
                digest.update(block)
                size += len(block)
        return digest, size

    return await asyncio.to_thread(run)


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


async def verify(
    partial: Path, actual: str, sha256: str | None, progress: Progress, source: str
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
        raise CorruptDownload(f"the file from {source} {problem}; it was deleted")
