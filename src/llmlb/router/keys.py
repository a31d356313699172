"""API keys: scoped, optionally expiring, stored hashed; the secret is shown once.

Lookups happen on every request, so verified keys are held in memory and the table is only
read again when this router changes a key or the cache is older than ``refresh_seconds``
(another router, or the management CLI, may have revoked one).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import insert, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from llmlb.common.errors import BadRequest, LlmlbError, NotFound, Unavailable
from llmlb.common.names import validate_name
from llmlb.router.clouds import prefix_of
from llmlb.router.db import api_keys

log = logging.getLogger(__name__)
RELOAD_WAIT = 2.0  # seconds a request may wait for the key table (see KeyStore._refresh)

Scope = Literal["api", "node", "admin"]
SCOPES: tuple[Scope, ...] = ("api", "node", "admin")
SECRET_PREFIX = "llmlb_"


def hash_secret(secret: str) -> str:
    # Secrets are 256 random bits, so a plain SHA-256 is enough (no password stretching).
    return hashlib.sha256(secret.encode()).hexdigest()


LimitedName = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$")]


class KeyLimits(BaseModel):
    """What one key may ask of the fleet (None: no limit)."""

    model_config = ConfigDict(extra="forbid")

    requests_per_minute: int | None = Field(default=None, ge=1, le=2**31 - 1)
    tokens_per_minute: int | None = Field(default=None, ge=1, le=2**31 - 1)  # an INTEGER column
    # Names as the router resolves them (canonical local names, ``provider:model`` clouds).
    models: list[LimitedName] | None = Field(default=None, min_length=1, max_length=100)

    @property
    def any(self) -> bool:
        return any(v is not None for v in (self.requests_per_minute, self.tokens_per_minute,
                                            self.models))  # fmt: skip


def with_resolved_models(limits: KeyLimits, resolve: Callable[[str], str]) -> KeyLimits:
    """``limits`` with its models as requests will name them: a cloud model as it is
    (``openai:gpt-4o``), a local one by its store name (``gemma3:270m`` -> ``gemma-3-270m``),
    validated. BadRequest naming a bad one."""
    if limits.models is None:
        return limits
    names = []
    for model in limits.models:
        if prefix_of(model) is not None:
            names.append(model)
            continue
        try:
            names.append(validate_name(resolve(model), model))
        except LlmlbError as exc:
            raise BadRequest(f"limits.models: {exc.message}", param="limits.models") from exc
    return limits.model_copy(update={"models": list(dict.fromkeys(names))})


def key_name(value: object) -> str:
    """A key's name as an operator gave it: short, printable."""
    name = str(value or "unnamed")
    if len(name) > 200 or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise BadRequest("'name' is at most 200 printable characters", param="name")
    return name


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    scopes: frozenset[str]
    prefix: str
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    limits: KeyLimits = field(default_factory=KeyLimits)

    def usable(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "scopes": sorted(self.scopes),
            "prefix": self.prefix,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
            "limits": self.limits.model_dump(),
        }


def _from_row(row: Any) -> ApiKey:
    limits = KeyLimits.model_construct(
        requests_per_minute=row.requests_per_minute, tokens_per_minute=row.tokens_per_minute,
        models=row.models,
    )  # fmt: skip
    return ApiKey(
        row.id, row.name, frozenset(row.scopes.split(",")), row.prefix,
        row.created_at, row.expires_at, row.revoked_at, limits,
    )  # fmt: skip


class KeyStore:
    def __init__(self, engine: AsyncEngine, refresh_seconds: float = 5.0) -> None:
        self._engine = engine
        self._refresh_seconds = refresh_seconds
        self._by_hash: dict[str, ApiKey] = {}
        self._loaded_at = 0.0  # 0: read again at the next lookup
        self._ever_loaded = False
        self._reloading: asyncio.Task[None] | None = None
        self._database_away = False

    async def create(
        self,
        name: str,
        scopes: list[str],
        expires_at: float | None = None,
        limits: KeyLimits | None = None,
    ) -> tuple[ApiKey, str]:
        unknown = set(scopes) - set(SCOPES)
        if not scopes or unknown:
            raise BadRequest(f"scopes must be a non-empty subset of {list(SCOPES)}", param="scopes")
        if expires_at is not None and expires_at <= time.time():
            raise BadRequest("expires_at must be in the future", param="expires_at")
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        limits = limits or KeyLimits()
        key = ApiKey(
            str(uuid.uuid4()), key_name(name), frozenset(scopes), secret[:12], time.time(),
            expires_at, None, limits,
        )  # fmt: skip
        async with self._engine.begin() as connection:
            await connection.execute(
                insert(api_keys).values(
                    id=key.id, name=key.name, scopes=",".join(sorted(key.scopes)),
                    secret_hash=hash_secret(secret), prefix=key.prefix,
                    created_at=key.created_at, expires_at=expires_at,
                    requests_per_minute=limits.requests_per_minute,
                    tokens_per_minute=limits.tokens_per_minute, models=limits.models,
                )
            )  # fmt: skip
        await self._reread()  # this router sees the change at once
        return key, secret

    async def list(self) -> list[ApiKey]:
        async with self._engine.connect() as connection:
            rows = await connection.execute(select(api_keys).order_by(api_keys.c.created_at))
            return [_from_row(row) for row in rows]

    async def revoke(self, key_id: str) -> ApiKey:
        async with self._engine.begin() as connection:
            result = await connection.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=time.time())
            )
            if result.rowcount == 0:
                row = (
                    await connection.execute(select(api_keys).where(api_keys.c.id == key_id))
                ).first()
                if row is None:
                    raise NotFound(f"no API key with id {key_id!r}")
        await self._reread()  # this router sees the change at once
        return next(k for k in await self.list() if k.id == key_id)

    async def verify(self, secret: str) -> ApiKey | None:
        """The usable key with this secret, or None."""
        now = time.time()
        digest = hash_secret(secret)
        age = now - self._loaded_at
        # Re-read when stale (in the background: requests go on with the keys read last), or
        # on a miss (a key just made elsewhere: that request waits for it, a little).
        if digest not in self._by_hash and age > 1.0:
            await self._refresh(now, wait=True)
        elif age > self._refresh_seconds:
            await self._refresh(now, wait=False)
        key = self._by_hash.get(digest)
        return key if key is not None and key.usable(now) else None

    async def spent(self, secret: str) -> bool:
        """Whether this secret is a key that was revoked or has expired (verify first)."""
        key = self._by_hash.get(hash_secret(secret))
        return key is not None and not key.usable(time.time())

    async def _reread(self) -> None:
        """A reload that starts now (one already running may predate a change just made)."""
        running = self._reloading
        if running is not None and not running.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(running), RELOAD_WAIT)
        self._reloading = None
        await self._refresh(time.time(), wait=True)

    async def _refresh(self, now: float, *, wait: bool) -> None:
        """One reload at a time, shared by every request that finds the cache stale. Only a
        request that must (a miss, or nothing read yet) waits for it, and at most
        ``RELOAD_WAIT`` seconds: a database that hangs cannot hold the requests."""
        if self._reloading is None or self._reloading.done():
            self._reloading = asyncio.create_task(self._reload(now))
            self._reloading.add_done_callback(_retrieve)
        if wait or not self._ever_loaded:
            try:
                await asyncio.wait_for(asyncio.shield(self._reloading), RELOAD_WAIT)
            except TimeoutError:
                if not self._ever_loaded:
                    raise Unavailable("the key database does not answer; try again") from None

    async def _reload(self, now: float) -> None:
        """Read the keys again. With the database away, the keys read last stay in force
        (tried again in a second): requests keep being served, and a key revoked meanwhile
        is refused once the database is back."""
        try:
            async with self._engine.connect() as connection:
                rows = await connection.execute(select(api_keys))
                self._by_hash = {row.secret_hash: _from_row(row) for row in rows}
        except (SQLAlchemyError, OSError) as exc:
            if not self._ever_loaded:
                raise Unavailable("the key database cannot be read; try again shortly") from exc
            if not self._database_away:
                log.warning("cannot read the keys (%s); using the ones read last",
                            type(exc).__name__)  # fmt: skip
            self._database_away = True
            self._loaded_at = now - self._refresh_seconds + 1.0
            return
        if self._database_away:
            log.info("the key database is back")
        self._database_away = False
        self._ever_loaded = True
        self._loaded_at = now

    async def has_scope(self, scope: Scope) -> bool:
        """Whether any usable key of this scope exists."""
        now = time.time()
        if now - self._loaded_at > self._refresh_seconds:
            await self._refresh(now, wait=False)
        return any(scope in k.scopes and k.usable(now) for k in self._by_hash.values())


def _retrieve(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()  # reported by the requests that wait; never "never retrieved"
