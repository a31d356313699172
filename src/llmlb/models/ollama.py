"""Explicit import of models from an Ollama store (``llmlb models import-ollama``).

Ollama keeps manifests at ``manifests/<registry>/<namespace>/<model>/<tag>`` (JSON with
``layers``) and content-addressed blobs at ``blobs/sha256-<hex>``. The layer of media type
``application/vnd.ollama.image.model`` is the GGUF file. Each one is hard-linked (or copied)
into llmlb's store as ``<model>-<tag>``. Nothing reads Ollama's store unless asked to.
"""

from __future__ import annotations

import re
from pathlib import Path

import orjson

from llmlb.common.errors import BadRequest
from llmlb.models.gguf import GGUF_MAGIC
from llmlb.models.store import ModelStore

MODEL_LAYER = "application/vnd.ollama.image.model"


def readable_name(model: str, tag: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{model}-{tag}").strip("-.")
    return re.sub(r"\.{2,}", ".", name)[:128] or "model"


def import_ollama(root: Path, store: ModelStore) -> list[str]:
    manifests = root / "manifests"
    if not manifests.is_dir():
        raise BadRequest(f"{root} is not an Ollama models folder (no manifests/)")
    imported = []
    for manifest in sorted(p for p in manifests.rglob("*") if p.is_file()):
        try:
            layers = orjson.loads(manifest.read_bytes()).get("layers", [])
        except (orjson.JSONDecodeError, AttributeError):
            continue
        digest = next(
            (layer.get("digest") for layer in layers if layer.get("mediaType") == MODEL_LAYER), None
        )
        if not isinstance(digest, str) or not digest.startswith("sha256:"):
            continue
        blob = root / "blobs" / digest.replace(":", "-")
        if not blob.is_file():
            continue
        with blob.open("rb") as stream:
            if stream.read(4) != GGUF_MAGIC:
                continue
        name = readable_name(manifest.parent.name, manifest.name)
        if store.get(name) is None:
            store.add(name, blob, sha256=digest.split(":", 1)[1],
                      metadata={"source": f"ollama {manifest.relative_to(manifests)}"})  # fmt: skip
        imported.append(name)
    return imported
