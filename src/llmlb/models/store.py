"""The model store: ``<home>/models/<name>/model.gguf`` plus ``metadata.json``.

A model published as a split GGUF is kept as its parts, ``model-00001-of-00003.gguf`` and
so on: llama.cpp loads the first and finds the others by that naming pattern. A split model
is in the store only once every part is (a part lands under its final name only verified).

The same layout serves the router and every node. Names are validated before any path is
built, so a name can never reach outside the models folder.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from llmlb.common.errors import CorruptMetadata
from llmlb.common.names import InvalidModelName, is_model_name, validate_name

log = logging.getLogger(__name__)

MODEL_FILE = "model.gguf"
# A vision model's multimodal projector (llama.cpp's mmproj), beside its model file.
PROJECTOR_FILE = "mmproj.gguf"
METADATA_FILE = "metadata.json"
_FIRST_PART = re.compile(r"model-00001-of-(\d{5})\.gguf")


def part_file(index: int, count: int) -> str:
    """The store's name of part ``index`` (from 1) of a split model (llama.cpp's pattern)."""
    return f"model-{index:05d}-of-{count:05d}.gguf"


def model_files(count: int) -> list[str]:
    """The file names of a model in ``count`` parts (1: the single ``model.gguf``)."""
    if count == 1:
        return [MODEL_FILE]
    return [part_file(index, count) for index in range(1, count + 1)]


def sha256_file(path: Path, chunk: int = 4 * 1024 * 1024) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while block := stream.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class StoredModel:
    name: str
    path: Path  # the file llama.cpp opens: the model, or the first part of a split one
    size_bytes: int  # all parts together
    metadata: dict[str, Any]
    parts: tuple[Path, ...] = ()  # every file of a split model, in order; () when single

    @property
    def files(self) -> tuple[Path, ...]:
        return self.parts or (self.path,)

    @property
    def sha256(self) -> str | None:
        value = self.metadata.get("sha256")
        return str(value) if value else None

    @property
    def projector(self) -> Path | None:
        """Its multimodal projector, when it has one: it sees images. (Only in a model's own
        folder: a shared folder's loose GGUFs have none.)"""
        if self.path.name != MODEL_FILE and not _FIRST_PART.fullmatch(self.path.name):
            return None
        path = self.path.parent / PROJECTOR_FILE
        return path if path.is_file() else None


class ModelStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        # metadata.json read once per change (requests look models up on the event loop).
        self._metadata_cache: dict[Path, tuple[tuple[int, int], dict[str, Any]]] = {}

    def folder(self, name: str) -> Path:
        return self.root / validate_name(name)

    def get(self, name: str) -> StoredModel | None:
        folder = self.folder(name)
        path = folder / MODEL_FILE
        if path.is_file():
            return StoredModel(name, path, path.stat().st_size, self._metadata(folder))
        return self._split(name, folder)

    def _split(self, name: str, folder: Path) -> StoredModel | None:
        """The model's parts, when all of them are here."""
        if not folder.is_dir():
            return None
        for entry in folder.iterdir():
            match = _FIRST_PART.fullmatch(entry.name)
            if match is None:
                continue
            count = int(match.group(1))
            if count < 2:
                continue  # not a split name llama.cpp would load
            parts = tuple(folder / file for file in model_files(count))
            try:
                size = sum(part.stat().st_size for part in parts)
            except FileNotFoundError:
                return None  # a part still downloading
            return StoredModel(name, parts[0], size, self._metadata(folder), parts)
        return None

    def list(self) -> list[StoredModel]:
        if not self.root.is_dir():
            return []
        found = []
        for entry in sorted(self.root.iterdir()):
            if entry.is_dir() and is_model_name(entry.name):
                try:
                    model = self.get(entry.name)
                except CorruptMetadata as exc:  # one broken folder must not hide the rest
                    log.warning("%s", exc.message)
                    continue
                if model is not None:
                    found.append(model)
        return found

    def add(
        self,
        name: str,
        source: Path,
        *,
        link: bool = True,
        sha256: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> StoredModel:
        """Put ``source`` into the store as ``name``: hard-link when possible, else copy.

        The file lands under a temporary name and is renamed into place, so a reader never
        sees half a model.
        """
        folder = self.folder(name)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / MODEL_FILE
        staging = folder / (MODEL_FILE + ".partial")
        staging.unlink(missing_ok=True)
        linked = False
        if link:
            try:
                os.link(source, staging)
                linked = True
            except OSError:
                linked = False
        if not linked:
            shutil.copyfile(source, staging)
        digest = sha256 or sha256_file(staging)
        os.replace(staging, target)
        meta = {**(metadata or {}), "name": name, "sha256": digest}
        meta["size_bytes"] = target.stat().st_size
        self.write_metadata(name, meta)
        stored = self.get(name)
        assert stored is not None
        return stored

    def add_projector(self, name: str, source: Path) -> StoredModel:
        """Give a stored model its multimodal projector (copied; renamed into place)."""
        model = self.get(name)
        if model is None:
            raise InvalidModelName(f"model {name!r} is not in the store")
        staging = model.path.parent / (PROJECTOR_FILE + ".partial")
        shutil.copyfile(source, staging)
        digest = sha256_file(staging)
        os.replace(staging, model.path.parent / PROJECTOR_FILE)
        return self.update_metadata(name, {"projector": {"file": PROJECTOR_FILE,
                                                         "sha256": digest}})  # fmt: skip

    def write_metadata(self, name: str, metadata: dict[str, Any]) -> None:
        folder = self.folder(name)
        staging = folder / (METADATA_FILE + ".tmp")
        staging.write_bytes(orjson.dumps(metadata, option=orjson.OPT_INDENT_2))
        os.replace(staging, folder / METADATA_FILE)

    def update_metadata(self, name: str, extra: dict[str, Any]) -> StoredModel:
        """Merge ``extra`` (keys with a value) into the model's metadata.json."""
        model = self.get(name)
        if model is None:
            raise InvalidModelName(f"model {name!r} is not in the store")
        self.write_metadata(name, {**model.metadata, **{k: v for k, v in extra.items() if v}})
        updated = self.get(name)
        assert updated is not None
        return updated

    def remove(self, name: str) -> bool:
        folder = self.folder(name)
        if not folder.exists():
            return False
        shutil.rmtree(folder)
        return True

    def _metadata(self, folder: Path) -> dict[str, Any]:
        """The folder's metadata.json ({} when there is none); CorruptMetadata naming it."""
        path = folder / METADATA_FILE
        try:
            stat = path.stat()
        except FileNotFoundError:
            return {}
        version = (stat.st_mtime_ns, stat.st_size)
        cached = self._metadata_cache.get(path)
        if cached is not None and cached[0] == version:
            return cached[1]
        try:
            data = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, orjson.JSONDecodeError) as exc:
            raise CorruptMetadata(f"cannot read {path}: {exc}; fix or delete the file") from exc
        if not isinstance(data, dict):
            raise CorruptMetadata(f"{path} must hold a JSON object; fix or delete the file")
        self._metadata_cache[path] = (version, data)
        return data
