"""Importing from an Ollama store: manifests name blobs; GGUF blobs are linked in by name."""

import hashlib
import json
from pathlib import Path

from llmlb.models.ollama import import_ollama
from llmlb.models.store import ModelStore


def make_ollama(root: Path, model: str, tag: str, data: bytes) -> None:
    digest = hashlib.sha256(data).hexdigest()
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    (root / "blobs" / f"sha256-{digest}").write_bytes(data)
    manifest = root / "manifests" / "registry.ollama.ai" / "library" / model / tag
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({"layers": [
        {"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:" + "1" * 64},
        {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{digest}"},
    ]}))  # fmt: skip


def test_gguf_blobs_are_linked_under_readable_names(tmp_path: Path) -> None:
    ollama = tmp_path / "ollama"
    make_ollama(ollama, "llama3.2", "1b", b"GGUF" + b"\0" * 64)
    make_ollama(ollama, "weird", "not-gguf", b"<html>")
    store = ModelStore(tmp_path / "store")
    assert import_ollama(ollama, store) == ["llama3.2-1b"]
    model = store.get("llama3.2-1b")
    assert model is not None
    assert model.path.stat().st_nlink == 2  # linked, not copied
    assert model.sha256 == hashlib.sha256(b"GGUF" + b"\0" * 64).hexdigest()
    assert import_ollama(ollama, store) == ["llama3.2-1b"]  # idempotent
