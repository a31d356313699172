"""Models operators register from Hugging Face (``models.hub``), kept in the database.

A registration is checked whole before it is stored: the repository exists and has the GGUF
asked for (a 4xx now, not at the first request), the header reads, and the name and aliases
collide with no other model's. Every write takes the next revision of the ``catalog`` topic
(``router.storage.revisions``); each router compares it every sync and, when it moved, reads
the registered models again into its catalog, so every router serves what any one
registered, and a restart keeps them. Registered models are then distributed like any other
catalog model.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from llmlb.common.errors import BadRequest, Conflict, NotFound
from llmlb.common.names import store_name
from llmlb.models.catalog import Catalog, CatalogEntry, CatalogError, Tier
from llmlb.models.hub import (
    Hub,
    choose,
    default_name,
    entry_for,
    parse_reference,
    projector_of,
)
from llmlb.router.storage.db import registered_models
from llmlb.router.storage.revisions import current_revision, next_revision

log = logging.getLogger(__name__)
TOPIC = "catalog"
MAX_REGISTERED = 10_000


class Registrations:
    def __init__(self, engine: AsyncEngine, catalog: Catalog, hub: Hub) -> None:
        self._engine = engine
        self._catalog = catalog
        self._hub = hub
        self._seen = -1  # the catalog topic's revision this router last read
        self._rows: dict[str, Any] = {}  # name -> row, as last read

    async def sync(self) -> None:
        """Read the registered models again if any router changed them since."""
        async with self._engine.connect() as connection:
            revision = await current_revision(connection, TOPIC)
            if revision == self._seen:
                return
            rows = list(await connection.execute(select(registered_models)))
        entries, tiers = [], []
        for row in rows:
            try:
                entry = CatalogEntry.model_validate(row.entry)
            except ValueError:
                log.error("registered model %s is unreadable; left out", row.name)
                continue
            entries.append(entry)
            if row.tier_min_gpu_memory_bytes is not None:
                tiers.append(Tier(min_gpu_memory_bytes=row.tier_min_gpu_memory_bytes,
                                  model=entry.name))  # fmt: skip
        try:
            self._catalog.set_registered(entries, tiers)
        except CatalogError:  # (a home entry took a name since, or two routers raced)
            entries, tiers = self._without_clashes(entries, tiers)
            self._catalog.set_registered(entries, tiers)
        self._rows = {row.name: row for row in rows}
        self._seen = revision

    def _without_clashes(
        self, entries: list[CatalogEntry], tiers: list[Tier]
    ) -> tuple[list[CatalogEntry], list[Tier]]:
        """The registered models that fit together with the catalog, in the order they were
        read; each one left out is logged with the reason."""
        kept: list[CatalogEntry] = []
        for entry in entries:
            try:
                self._catalog.set_registered([*kept, entry], [])
            except CatalogError as exc:
                log.error("registered model %s left out: %s", entry.name, exc.message)
                continue
            kept.append(entry)
        names = {entry.name for entry in kept}
        return kept, [tier for tier in tiers if tier.model in names]

    def listing(self) -> list[dict[str, Any]]:
        return [
            {**entry.public(), "registered_at": self._rows[entry.name].registered_at,
             "registered_by": self._rows[entry.name].registered_by,
             "tier_min_gpu_memory_bytes": self._rows[entry.name].tier_min_gpu_memory_bytes}
            for entry in self._catalog.registered() if entry.name in self._rows
        ]  # fmt: skip

    async def register(
        self, reference: str, name: str | None, aliases: list[str], who: str | None
    ) -> tuple[CatalogEntry, str]:
        """The new entry, and how its file was chosen (``Q4_K_M, the default``)."""
        ref = parse_reference(reference)
        listing = await self._hub.files(ref)
        files, how = choose(ref, listing)
        info, commit = await self._hub.header(ref, files[0])
        if commit is not None:
            ref = dataclasses.replace(ref, revision=commit)
        chosen = store_name(name) if name else default_name(files)
        try:
            entry = entry_for(ref, files, info, chosen, aliases, projector_of(listing))
        except ValueError as exc:
            raise BadRequest(f"{ref.describe()}: {exc}", param="aliases") from exc
        await self.sync()
        if len(self._catalog.registered()) >= MAX_REGISTERED:
            raise Conflict(f"{MAX_REGISTERED} models are registered already; remove some first")
        self._check_fits([*self._catalog.registered(), entry])
        try:
            await self._write(lambda: insert(registered_models).values(
                name=entry.name, entry=entry.model_dump(mode="json", exclude_none=True),
                registered_at=time.time(), registered_by=who))  # fmt: skip
        except IntegrityError:
            raise Conflict(f"model {entry.name!r} was registered already",
                           code="model_exists") from None  # fmt: skip
        await self.sync()
        log.info("registered %s from %s (%s)", entry.name, ref.describe(), how)
        return entry, how

    async def update(self, name: str, changes: dict[str, Any]) -> CatalogEntry:
        """New aliases, description, capabilities or tier (``tier_min_gpu_memory_bytes``)."""
        await self.sync()
        row = self._row(name)
        name = row.name
        allowed = {"aliases", "description", "capabilities", "tier_min_gpu_memory_bytes"}
        unknown = set(changes) - allowed
        if unknown:
            field = sorted(unknown)[0]
            raise BadRequest(f"'{field}' cannot be changed (only {', '.join(sorted(allowed))})",
                             param=field)  # fmt: skip
        data = {
            **row.entry,
            **{k: v for k, v in changes.items() if k != "tier_min_gpu_memory_bytes"},
        }
        try:
            entry = CatalogEntry.model_validate(data)
        except ValueError as exc:
            raise BadRequest(f"model {name!r}: {exc}") from exc
        tier = changes.get("tier_min_gpu_memory_bytes", row.tier_min_gpu_memory_bytes)
        if tier is not None and (isinstance(tier, bool) or not isinstance(tier, int)
                                 or not 0 <= tier < 2**63):  # fmt: skip
            raise BadRequest("'tier_min_gpu_memory_bytes' is a number of bytes",
                             param="tier_min_gpu_memory_bytes")  # fmt: skip
        others = [e for e in self._catalog.registered() if e.name != name]
        self._check_fits([*others, entry])
        await self._write(lambda: update(registered_models)
                          .where(registered_models.c.name == name)
                          .values(entry=entry.model_dump(mode="json", exclude_none=True),
                                  tier_min_gpu_memory_bytes=tier))  # fmt: skip
        await self.sync()
        return entry

    async def remove(self, name: str) -> None:
        await self.sync()
        name = self._row(name).name  # (it may have been named by an alias)
        await self._write(lambda: delete(registered_models)
                          .where(registered_models.c.name == name))  # fmt: skip
        await self.sync()
        log.info("unregistered %s", name)

    def _row(self, name: str) -> Any:
        row = self._rows.get(self._catalog.resolve(name))
        if row is None:
            raise NotFound(
                f"{name!r} is not a registered model (shipped and home catalog entries are "
                "not changed here)", code="model_not_registered",
            )  # fmt: skip
        return row

    def _check_fits(self, registered: list[CatalogEntry]) -> None:
        """A trial catalog with these registered models: a clash is a 409 naming it."""
        trial = Catalog({e.name: e for e in self._catalog.entries()
                         if not self._catalog.is_registered(e.name)})  # fmt: skip
        try:
            trial.set_registered(registered, [])
        except CatalogError as exc:
            raise Conflict(exc.message, code="model_exists") from exc

    async def _write(self, statement: Any) -> None:
        async with self._engine.begin() as connection:
            await next_revision(connection, TOPIC)
            await connection.execute(statement())
