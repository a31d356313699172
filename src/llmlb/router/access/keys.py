"""API keys: scoped, optionally expiring, stored hashed; the secret is shown once.

Lookups happen on every request, so the keys are held in memory (``KeyStore``), and what
another router or the management CLI changes reaches this one by revision, not by reading
the whole table again.
"""

from __future__ import annotations

import asyncio
import dataclasses
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
from llmlb.router.cloud.clouds import prefix_of
from llmlb.router.storage.db import api_keys
from llmlb.router.storage.revisions import current_revision, next_revision

log = logging.getLogger(__name__)
RELOAD_WAIT = 2.0  # seconds a request may wait for the key table (see KeyStore.sync)
TOPIC = "api_keys"  # the revisions row that the key table's writes advance

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
    """The keys, held in memory, kept in step with the table by revision.

    Every write to the table (a key made or revoked, by any router or the management CLI)
    takes the next number from the ``revisions`` row of ``api_keys`` and stamps the key's row
    with it, in the same transaction. ``sync`` reads that one row and, when it moved, only
    the keys stamped since: a change reaches every router within ``sync_seconds`` (the
    service runs ``sync`` that often), and costs the same with ten keys or ten thousand.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._by_hash: dict[str, ApiKey] = {}
        self._revision = -1  # of the table as read last; -1: never read
        self._syncing: asyncio.Task[None] | None = None
        self._again = False  # a change was announced while a sync ran: one more after it
        self._database_away = False

    async def create(
        self,
        name: str,
        scopes: list[str],
        expires_at: float | None = None,
        limits: KeyLimits | None = None,
        secret: str | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key; its secret is made here unless the operator supplies one (a deployment's
        node token, handed to the nodes from its own secret store)."""
        unknown = set(scopes) - set(SCOPES)
        if not scopes or unknown:
            raise BadRequest(f"scopes must be a non-empty subset of {list(SCOPES)}", param="scopes")
        if expires_at is not None and expires_at <= time.time():
            raise BadRequest("expires_at must be in the future", param="expires_at")
        secret = secret or SECRET_PREFIX + secrets.token_urlsafe(32)
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
                    revision=await next_revision(connection, TOPIC),
                )
            )  # fmt: skip
        self._hold(hash_secret(secret), key)  # this router sees it at once
        return key, secret

    async def list(self) -> list[ApiKey]:
        async with self._engine.connect() as connection:
            rows = await connection.execute(select(api_keys).order_by(api_keys.c.created_at))
            return [_from_row(row) for row in rows]

    async def revoke(self, key_id: str) -> ApiKey:
        async with self._engine.begin() as connection:
            found = select(api_keys).where(api_keys.c.id == key_id)
            row = (await connection.execute(found)).first()
            if row is None:
                raise NotFound(f"no API key with id {key_id!r}")
            key = _from_row(row)
            if key.revoked_at is None:
                key = dataclasses.replace(key, revoked_at=time.time())
                await connection.execute(
                    update(api_keys).where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                    .values(revoked_at=key.revoked_at,
                            revision=await next_revision(connection, TOPIC))
                )  # fmt: skip
        self._hold(row.secret_hash, key)  # this router refuses it at once
        return key

    def _hold(self, digest: str, key: ApiKey) -> None:
        self._by_hash[digest] = key

    async def verify(self, secret: str) -> ApiKey | None:
        """The usable key with this secret, or None. A secret not held yet (a key just made
        through another router) waits for one sync, shared with every other such request."""
        digest = hash_secret(secret)
        key = self._by_hash.get(digest)
        if key is None:
            await self.sync(wait=True)
            key = self._by_hash.get(digest)
        return key if key is not None and key.usable(time.time()) else None

    async def spent(self, secret: str) -> bool:
        """Whether this secret is a key that was revoked or has expired (verify first)."""
        key = self._by_hash.get(hash_secret(secret))
        return key is not None and not key.usable(time.time())

    def changed(self) -> None:
        """Another router announced a change (``revisions.RevisionListener``): sync now, or
        once more after the sync in flight, which may have read before the change."""
        if self._syncing is not None and not self._syncing.done():
            self._again = True
            return
        self._syncing = asyncio.create_task(self._sync())
        self._syncing.add_done_callback(_retrieve)

    async def sync(self, *, wait: bool = True) -> None:
        """Take in what changed in the table since the last sync: one at a time, shared by
        every caller. Waits at most ``RELOAD_WAIT`` seconds (a database that hangs cannot
        hold requests), except before the keys were ever read."""
        if self._syncing is None or self._syncing.done():
            self._syncing = asyncio.create_task(self._sync())
            self._syncing.add_done_callback(_retrieve)
        if not wait and self._revision >= 0:
            return
        try:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancellation
            # that comes as the sync ends (the key sync loop then never stopped).
            async with asyncio.timeout(RELOAD_WAIT):
                await asyncio.shield(self._syncing)
        except TimeoutError:
            if self._revision < 0:
                raise Unavailable("the key database does not answer; try again") from None

    async def _sync(self) -> None:
        await self._read_changes()
        while self._again:
            self._again = False
            await self._read_changes()

    async def _read_changes(self) -> None:
        """With the database away, the keys read last stay in force: requests go on being
        served, and a key revoked meanwhile is refused once it is back."""
        try:
            async with self._engine.connect() as connection:
                current = await current_revision(connection, TOPIC)
                if current == self._revision:
                    return
                changed = await connection.execute(
                    select(api_keys).where(api_keys.c.revision > self._revision)
                )
                for row in changed:
                    self._hold(row.secret_hash, _from_row(row))
        except (SQLAlchemyError, OSError) as exc:
            if self._revision < 0:
                raise Unavailable("the key database cannot be read; try again shortly") from exc
            if not self._database_away:
                log.warning("cannot read the keys (%s); using the ones read last",
                            type(exc).__name__)  # fmt: skip
            self._database_away = True
            return
        if self._database_away:
            log.info("the key database is back")
        self._database_away = False
        self._revision = current

    async def has_scope(self, scope: Scope) -> bool:
        """Whether any usable key of this scope exists."""
        if self._revision < 0:
            await self.sync()
        now = time.time()
        return any(scope in k.scopes and k.usable(now) for k in self._by_hash.values())


def _retrieve(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()  # reported by the requests that wait; never "never retrieved"
