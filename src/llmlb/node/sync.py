"""Keeping the node's store in step with its router: the assigned models, and room for them.

The router sends its list of assigned models in every registration and heartbeat answer
(the router is the source of truth). The node fetches each one it lacks, as an ordinary
single-flight download, so a node restarted mid-download resumes the ``.partial`` as soon
as the router's answer names the model again. A fetch that failed is tried again after
``RETRY_SECONDS``; the reason stays in the sync state until then.

Room: before any download starts (assigned, pulled by the operator or asked for by a
request) the node checks that the model fits on the disk and under ``--store-limit``. With
``--prune``, and only for a model the router assigns, it makes room by deleting models the
router no longer assigns, least recently used first, but only models that are not loaded
(never one that serves or could be serving) and only when the deletions make enough room;
otherwise nothing is deleted and the fetch fails with the figures.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmlb.common.errors import CorruptMetadata, InsufficientStorage, LlmlbError
from llmlb.common.settings import NodeSettings
from llmlb.common.wire import MAX_REPORTED_MODELS, SyncState
from llmlb.models.memory import gib
from llmlb.models.store import METADATA_FILE, StoredModel
from llmlb.node.resolver import ModelResolver

log = logging.getLogger(__name__)

RETRY_SECONDS = 60.0


class ModelSync:
    def __init__(
        self,
        settings: NodeSettings,
        resolver: ModelResolver,
        loaded: Callable[[], set[str]],
    ) -> None:
        self._settings = settings
        self._resolver = resolver
        self._loaded = loaded  # the models with an engine in the pool
        self.assigned: list[str] = []
        self._lists: dict[str, list[str]] = {}  # router -> its last list
        self._refused: dict[str, tuple[float, str]] = {}  # model -> (when, why) before fetching
        self._reserved: dict[str, int] = {}  # model -> bytes its download may write in all
        # The models missing when the router first answered (None before): the node says
        # ``initializing`` until they are here.
        self._first: set[str] | None = None
        resolver.before_fetch = self.make_room

    # -- what the router wants -------------------------------------------------------------

    async def update(self, assigned: list[str], router: str = "") -> None:
        """Take a router's list and start fetching what is missing (does not wait). With
        several routers (one database) the node holds what any of them last said."""
        self._lists[router] = list(assigned)
        merged = list(dict.fromkeys(m for models in self._lists.values() for m in models))
        if merged != self.assigned:
            log.info("the router assigns %s", ", ".join(merged) or "no models")
        self.assigned = merged
        if self._first is None:
            self._first = set(self.missing())
        now = time.monotonic()
        for name in self.assigned:
            if self._here(name) or self._resolver.downloads.active(name) is not None:
                continue
            failed_at = self._failed_at(name)
            if failed_at is not None and now - failed_at < RETRY_SECONDS:
                continue
            try:
                await self._resolver.pull(name)
            except LlmlbError as exc:
                self._refused[name] = (now, exc.message)
                log.warning("cannot fetch assigned model %s: %s", name, exc.message)

    def assign(self, name: str) -> None:
        if name not in self.assigned:
            self.assigned.append(name)

    def unassign(self, name: str) -> None:
        for models in (self.assigned, *self._lists.values()):
            if name in models:
                models.remove(name)
        self._refused.pop(name, None)

    def starting(self) -> bool:
        """Whether models assigned before the node first served are still downloading."""
        if not self._first:
            return False
        self._first = {n for n in self._first if self._resolver.downloads.active(n) is not None}
        return bool(self._first)

    def _failed_at(self, name: str) -> float | None:
        if name in self._refused:
            return self._refused[name][0]
        progress = self._resolver.downloads.progress.get(name)
        if progress is not None and progress.state == "failed":
            return progress.touched_at
        return None

    def missing(self) -> list[str]:
        return [name for name in self.assigned if not self._here(name)]

    def _here(self, name: str) -> bool:
        try:
            return self._resolver.local(name) is not None
        except CorruptMetadata:  # its files are here; the broken metadata is logged on use
            return True

    def state(self) -> SyncState:
        """For heartbeats: in sync, syncing (bytes of the missing models) or failed (why)."""
        missing = self.missing()
        if not missing:
            return SyncState()
        done = total = 0
        errors = []
        for name in missing:
            if name in self._refused:
                errors.append(f"{name}: {self._refused[name][1]}")
                continue
            progress = self._resolver.downloads.progress.get(name)
            if progress is None:
                continue
            if progress.state == "failed" and self._resolver.downloads.active(name) is None:
                errors.append(f"{name}: {progress.error}")
            done += progress.bytes_done
            total += progress.bytes_total or 0
        return SyncState(
            state="failed" if errors else "syncing",
            missing=missing[:MAX_REPORTED_MODELS],
            bytes_done=done,
            bytes_total=total,
            error="; ".join(errors)[:2000] or None,
        )

    # -- room on disk ----------------------------------------------------------------------

    async def make_room(self, name: str, row: dict[str, Any]) -> None:
        """Raise InsufficientStorage unless ``name`` (catalog row ``row``) fits, pruning
        unassigned idle models first where that is allowed and enough."""
        size = int(row.get("size_bytes") or 0)
        if size <= 0:
            return  # unknown size: the download checks the disk as the bytes arrive
        needed = size - self._bytes_of(name)
        room = self.room()
        if needed > room:
            self._prune_for(name, needed, room)
        # Nothing awaits between this check and the download's start (ModelResolver.pull),
        # and the reservation counts against the next check: two downloads cannot both
        # take the same room.
        self._reserved[name] = size
        self._refused.pop(name, None)

    def _prune_for(self, name: str, needed: int, room: int) -> None:
        short = needed - room
        candidates = self.prunable()
        freeable = sum(model.size_bytes for model in candidates)
        advice = (
            f"{gib(freeable, 2)} could be freed from unassigned models"
            if self._settings.prune
            else "start the node with --prune to let it delete unassigned models"
        )
        if self._settings.prune and name not in self.assigned:
            advice = "only a model the router assigns may make room by pruning others"
        if not self._settings.prune or name not in self.assigned or freeable < short:
            raise InsufficientStorage(
                f"no room for {name!r}: it needs {gib(needed, 2)} more, {gib(max(room, 0), 2)} "
                f"is free in the model store; {advice}"
            )
        for model in candidates:
            if short <= 0:
                break
            if self._resolver.store.remove(model.name):
                log.warning("pruned %s (%s, unassigned, last used %s) to make room for %s",
                            model.name, gib(model.size_bytes, 2),
                            time.ctime(last_used(model)), name)  # fmt: skip
                short -= model.size_bytes

    def room(self) -> int:
        """Bytes a new download may still write: free disk, within the store limit, less
        what the downloads under way will still write."""
        root = self._resolver.store.root
        root.mkdir(parents=True, exist_ok=True)
        room = shutil.disk_usage(root).free
        if self._settings.store_limit is not None:
            room = min(room, self._settings.store_limit - store_bytes(root))
        for name, size in list(self._reserved.items()):
            if self._resolver.downloads.active(name) is None:
                del self._reserved[name]  # finished or failed: its bytes are on disk or gone
            else:
                room -= max(size - self._bytes_of(name), 0)
        return room

    def prunable(self) -> list[StoredModel]:
        """Models in the store the router does not assign and no engine holds, least
        recently used first (shared-folder models are someone else's and never counted)."""
        keep = set(self.assigned) | self._loaded()
        models = [
            m for m in self._resolver.store.list()
            if m.name not in keep and self._resolver.downloads.active(m.name) is None
            # A hard link (an imported Ollama blob, `models add`) frees nothing.
            and all(f.stat().st_nlink == 1 for f in m.files)
        ]  # fmt: skip
        return sorted(models, key=last_used)

    def _bytes_of(self, name: str) -> int:
        """Bytes of the model's files already in its folder (parts done, partials)."""
        return folder_bytes(self._resolver.store.folder(name))


def last_used(model: StoredModel) -> float:
    """When the model last served a request, else when it arrived."""
    meta = model.metadata
    for key in ("last_used_at", "downloaded_at"):
        value = meta.get(key)
        if isinstance(value, int | float):
            return float(value)
    return model.path.stat().st_mtime


def store_bytes(root: Path) -> int:
    """Bytes of every model file in the store, partial downloads included."""
    return sum(folder_bytes(folder) for folder in root.iterdir())


def folder_bytes(folder: Path) -> int:
    """Bytes of one model folder's files (parts done, partials), its metadata left out."""
    if not folder.is_dir():
        return 0
    return sum(
        f.stat().st_size for f in folder.iterdir() if f.is_file() and f.name != METADATA_FILE
    )
