"""Finding a model the node lacks. First hit wins:

local store -> shared folder (``--shared-models-dir``; used in place, never copied) ->
the router's blob (when the router holds the file) -> the origin directly (a standalone node,
or ``--origin-access``; ``--origin-first`` puts it before the router's copy) -> the router
pulling it through from the origin -> an error naming every place tried.

Downloads are single-flight per model: concurrent requests wait for the same transfer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson

from llmlb.common.errors import ModelNotSupported, Unavailable, UpstreamFailed
from llmlb.common.names import validate_name
from llmlb.common.serving import client_tls
from llmlb.common.settings import NodeSettings
from llmlb.models.catalog import Catalog, CatalogEntry, serving_metadata
from llmlb.models.download import Downloads, ModelFile, Source, fetch_files
from llmlb.models.origins import install_package, model_files, origin_files
from llmlb.models.progress import Progress
from llmlb.models.store import MODEL_FILE, ModelStore, StoredModel

log = logging.getLogger(__name__)

CATALOG_TTL = 10.0
READ_BUFFER = 8 << 20


class ModelResolver:
    def __init__(self, settings: NodeSettings, store: ModelStore) -> None:
        self._settings = settings
        self.store = store
        self.downloads = Downloads()
        self._session: aiohttp.ClientSession | None = None
        self._router_catalog: tuple[float, dict[str, dict[str, Any]]] = (0.0, {})
        self._local_catalog = Catalog.load(settings.home)
        self._auth = (
            {"authorization": f"Bearer {settings.node_token}"} if settings.node_token else {}
        )
        # Called before a download starts, with the model and its catalog row: the node's
        # check for room on disk (node.sync), which raises to refuse the download.
        self.before_fetch: Callable[[str, dict[str, Any]], Awaitable[None]] | None = None

    # -- what is here ----------------------------------------------------------------------

    def shared(self, name: str) -> StoredModel | None:
        root = self._settings.shared_models_dir
        if root is None:
            return None
        for path in (root / name / MODEL_FILE, root / f"{name}.gguf"):
            if path.is_file():
                return StoredModel(name, path, path.stat().st_size, {"shared": True})
        return None

    def canonical(self, name: str) -> str:
        """The store name of a model as typed (``gpt-oss:20b``, a catalog alias), validated."""
        return validate_name(self._local_catalog.resolve(name), name)

    def local(self, name: str) -> StoredModel | None:
        validate_name(name)
        return self.store.get(name) or self.shared(name)

    def all_local(self) -> list[StoredModel]:
        found = {m.name: m for m in self.store.list()}
        root = self._settings.shared_models_dir
        if root is not None and root.is_dir():
            for entry in sorted(root.iterdir()):
                name = entry.name[:-5] if entry.name.endswith(".gguf") else entry.name
                if name not in found:
                    try:
                        shared = self.shared(name)
                    except Exception:  # an odd file name in someone else's folder
                        continue
                    if shared is not None:
                        found[name] = shared
        return [found[name] for name in sorted(found)]

    # -- the catalog -----------------------------------------------------------------------

    async def catalog_row(self, name: str) -> dict[str, Any] | None:
        """The model's catalog entry as the router describes it (or the local catalog)."""
        if self._settings.router:
            fetched_at, rows = self._router_catalog
            if time.monotonic() - fetched_at > CATALOG_TTL or name not in rows:
                try:
                    rows = await self._fetch_router_catalog()
                except (aiohttp.ClientError, TimeoutError, UpstreamFailed) as exc:
                    log.warning("cannot read the router's catalog: %s", exc)
                    rows = self._router_catalog[1]
            if name in rows:
                return rows[name]
        entry = self._local_catalog.get(name)
        return {**entry.public(), "on_router": False, "blob_url": None} if entry else None

    async def _fetch_router_catalog(self) -> dict[str, dict[str, Any]]:
        """The catalog of the first router that answers (they share one database)."""
        routers = self._settings.routers
        for index, router in enumerate(routers):
            try:
                async with self.session().get(
                    router + "/v0/models", headers=self._auth
                ) as response:
                    if response.status != 200:
                        raise UpstreamFailed(f"router catalog answered {response.status}")
                    data = orjson.loads(await response.read())
                break
            except (aiohttp.ClientError, TimeoutError, UpstreamFailed):
                if index == len(routers) - 1:
                    raise
        rows = {row["name"]: row for row in data["data"]}
        self._router_catalog = (time.monotonic(), rows)
        return rows

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, connect=10, sock_read=60),
                connector=aiohttp.TCPConnector(ssl=client_tls(self._settings)),
                # aiohttp pauses the socket past 2 x read_bufsize (64 KiB by default); model
                # files want big reads (bench/distribution.py).
                read_bufsize=READ_BUFFER,
            )
        return self._session

    # -- fetching --------------------------------------------------------------------------

    async def pull(self, name: str) -> asyncio.Task[StoredModel]:
        """Start (or join) the download of a model that is not here yet."""
        validate_name(name)
        existing = self.downloads.active(name)
        if existing is not None:
            return existing
        row = await self.catalog_row(name)
        if row is None:
            raise ModelNotSupported(
                f"model {name!r} is not supported: it is neither on this node nor in the catalog",
                param="model",
            )

        if self.before_fetch is not None:
            await self.before_fetch(name, row)

        async def fetch(progress: Progress) -> StoredModel:
            await self._fetch(name, row, progress)
            # Keep what serving needs (chat template, context, memory) beside the file.
            return self.store.update_metadata(name, serving_metadata(row))

        return self.downloads.start(name, fetch)

    async def _fetch(self, name: str, row: dict[str, Any], progress: Progress) -> StoredModel:
        shared_dir = self._settings.shared_models_dir
        tried = [
            "local store: absent",
            f"shared folder {shared_dir}: absent" if shared_dir else "shared folder: not set",
        ]
        fields = {k: v for k, v in row.items() if k in CatalogEntry.model_fields}
        entry = CatalogEntry.model_validate(fields) if row.get("origin") else None
        # A model the router holds but has no catalog entry for is one file.
        model = entry or CatalogEntry.model_validate({
            "name": name, "origin": {"url": "http://unknown/"}, "sha256": row.get("sha256"),
            "size_bytes": row.get("size_bytes"), "parts": row.get("parts"),
        })  # fmt: skip
        blob = row.get("blob_url")
        router_copy = [Source("router blob", str(blob), self._auth)] if blob else []
        steps: list[list[ModelFile] | CatalogEntry] = []
        if router_copy and row.get("on_router"):
            steps.append(model_files(model, router_copy))
        if entry is not None and self._settings.uses_origin:
            at = 0 if self._settings.origin_first else len(steps)
            steps.insert(at, entry if entry.origin.package else origin_files(entry))
        elif entry is not None:
            tried.append("origin: not allowed (start the node with --origin-access)")
        if router_copy and not row.get("on_router"):
            pull_through = [Source("router pull-through", str(blob), self._auth)]
            steps.append(model_files(model, pull_through))
        for step in steps:
            try:
                if isinstance(step, CatalogEntry):
                    return await install_package(self.store, step, progress)
                return await fetch_files(
                    self.session(), self.store, name, step, progress,
                    bandwidth=self._settings.download_bandwidth,
                )  # fmt: skip
            except UpstreamFailed as exc:
                tried.append(exc.message)
        raise UpstreamFailed(f"no source could provide {name!r}: " + "; ".join(tried))

    async def ensure(self, name: str, wait_seconds: float) -> StoredModel:
        """The model, fetched if needed; 503 with progress when it takes longer than allowed."""
        found = self.local(name)
        if found is not None:
            return found
        task = await self.pull(name)
        done, _ = await asyncio.wait({task}, timeout=wait_seconds)
        if done:
            return task.result()
        progress = self.downloads.progress[name]
        raise Unavailable(
            f"model {name!r} is downloading ({progress.percent or 0:.0f}% of "
            f"{progress.bytes_total or '?'} bytes); try again shortly",
            code="model_downloading",
            headers={"Retry-After": str(int(min(max(progress.eta_seconds or 10, 1), 60)))},
        )

    def progress_of(self, name: str) -> dict[str, Any] | None:
        progress = self.downloads.progress.get(name)
        if progress is not None and (progress.state != "completed" or self.local(name)):
            return progress.to_dict()
        found = self.local(name)
        if found is not None:
            return {"model": name, "state": "completed", "bytes_done": found.size_bytes,
                    "bytes_total": found.size_bytes, "percent": 100.0}  # fmt: skip
        return progress.to_dict() if progress else None

    def active_progress(self) -> dict[str, dict[str, Any]]:
        return {
            name: progress.to_dict()
            for name, progress in self.downloads.progress.items()
            if progress.state in ("pending", "downloading", "verifying", "failed")
        }

    async def close(self) -> None:
        await self.downloads.close()
        if self._session is not None:
            await self._session.close()
