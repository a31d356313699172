"""The router's state: SQLAlchemy Core tables on SQLite (default) or PostgreSQL.

The schema is brought to the newest at start (``router/schema``): a new database from these
tables, an older one by Alembic's migrations (``router/storage/migrations``), which these mirror.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    event,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.sql.expression import Executable

from llmlb.common.files import private_folder
from llmlb.router.storage.schema import bring_to_head

log = logging.getLogger(__name__)

metadata = MetaData()

nodes = Table(
    "nodes",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("base_url", String(500), nullable=False),
    Column("version", String(50), nullable=False, default=""),
    Column("devices", JSON, nullable=False),
    Column("approved", Boolean, nullable=False, default=True),
    Column("draining", Boolean, nullable=False, default=False),
    Column("registered_at", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
    Column("load", JSON, nullable=False),
    Column("label", String(200), nullable=True),  # the operator's name for it
    Column("tags", JSON, nullable=True),
    Column("assigned", JSON, nullable=True),  # models the router wants on the node
    Column("assigned_version", Integer, nullable=False, server_default="0"),
    # "node" for a node that registers itself; else an endpoint's kind (router.fleet.endpoints)
    Column("kind", String(20), nullable=False, server_default="node"),
    Column("endpoint", JSON, nullable=True),  # an endpoint's settings (models, concurrency)
    Column("secret", String(1000), nullable=True),  # an endpoint's API key, never shown
    UniqueConstraint("name", "base_url", name="uq_nodes_name_url"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("scopes", String(100), nullable=False),
    Column("secret_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(20), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=True),
    Column("revoked_at", Float, nullable=True),
    Column("requests_per_minute", Integer, nullable=True),
    Column("tokens_per_minute", Integer, nullable=True),
    Column("models", JSON, nullable=True),  # the models the key may use; None: any
    # The table's revision when the row was last written (router.storage.revisions): routers read
    # only the rows written since they last looked.
    Column("revision", BigInteger, nullable=False, server_default="0"),
    Index("ix_api_keys_revision", "revision"),
)

# One counter per table that routers keep in memory (router.storage.revisions).
# Models operators registered from the hub (models.hub): catalog entries every router adds
# to its catalog; each write takes the next revision of the "catalog" topic.
registered_models = Table(
    "registered_models",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("entry", JSON, nullable=False),  # the CatalogEntry
    Column("tier_min_gpu_memory_bytes", BigInteger, nullable=True),
    Column("registered_at", Float, nullable=False),
    Column("registered_by", String(200), nullable=True),
)

revisions = Table(
    "revisions",
    metadata,
    Column("topic", String(50), primary_key=True),
    Column("value", BigInteger, nullable=False),
)

# Failed logins, shared by the routers on one database (router.access.accounts.LoginThrottle).
login_failures = Table(
    "login_failures",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("who", String(100), nullable=False),  # "user:<name>" or "addr:<address>"
    Column("at", Float, nullable=False),  # wall clock
    Index("ix_login_failures_who_at", "who", "at"),
)

requests = Table(
    "requests",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ts", Float, nullable=False),
    Column("request_id", String(128), nullable=False),
    Column("key_id", String(36), nullable=True),
    Column("user", String(64), nullable=True),  # a signed-in user's name (the playground)
    Column("endpoint", String(50), nullable=False),
    Column("model", String(200), nullable=False),
    Column("node_id", String(36), nullable=True),
    Column("status", Integer, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("ttft_ms", Float, nullable=True),
    Column("tokens_in", Integer, nullable=True),
    Column("tokens_out", Integer, nullable=True),
    Column("attempts", Integer, nullable=False, default=1),
    Column("error", Text, nullable=True),
    Column("request_body", Text, nullable=True),
    Column("response_body", Text, nullable=True),
    Index("ix_requests_ts", "ts"),
    # One per filter of /api/requests, each ending in the time: a filtered page, newest first,
    # reads only its own rows, at hundreds of millions of rows.
    Index("ix_requests_model_ts", "model", "ts"),
    Index("ix_requests_node_ts", "node_id", "ts"),
    Index("ix_requests_key_ts", "key_id", "ts"),
    Index("ix_requests_user_ts", "user", "ts"),
    Index("ix_requests_status_ts", "status", "ts"),
)

# Each minute's requests summed as the history writes them (router.telemetry.history): the
# dashboard's per-minute figures for a day read 1,440 of these, not a day of requests.
request_minutes = Table(
    "request_minutes",
    metadata,
    Column("minute", BigInteger, primary_key=True, autoincrement=False),  # unix time // 60
    Column("requests", BigInteger, nullable=False),
    Column("errors", BigInteger, nullable=False),
    Column("tokens_out", BigInteger, nullable=False),
    Column("latency_ms_sum", Float, nullable=False),
    Column("ttft_ms_sum", Float, nullable=False),
    Column("ttft_count", BigInteger, nullable=False),
)

# Changes made through the admin API (router.telemetry.audit): who, what, when, from where,
# the result; a body's secrets blanked. Kept as long as the request history.
audit = Table(
    "audit",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ts", Float, nullable=False),
    Column("user", String(64), nullable=True),  # a signed-in user's name
    Column("key_id", String(36), nullable=True),  # or an API key's id (neither: loopback)
    Column("source", String(64), nullable=True),  # the client's address
    Column("action", String(300), nullable=False),  # "POST /api/keys"
    Column("target", JSON, nullable=True),  # the path's parameters
    Column("status", Integer, nullable=False),
    Column("detail", JSON, nullable=True),  # the body's fields, secrets blanked
    Index("ix_audit_ts", "ts"),
)

tasks = Table(
    "tasks",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("kind", String(20), nullable=False),  # node_pull, router_pull
    Column("model", String(200), nullable=False),
    Column("node_id", String(36), nullable=True),
    Column("state", String(20), nullable=False),  # pending, in_progress, completed, failed
    Column("bytes_done", BigInteger, nullable=False, default=0),
    Column("bytes_total", BigInteger, nullable=True),
    Column("speed", Float, nullable=False, default=0.0),
    Column("eta_seconds", Float, nullable=True),
    Column("error", Text, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("owner", String(36), nullable=True),  # the router running it
    Column("lease_until", Float, nullable=True),  # others take it over after this
    Index("ix_tasks_state", "state"),
)

# What each router process let each limited key use since it started (router.access.sharing):
# counters that only that process writes, read by the others.
key_usage = Table(
    "key_usage",
    metadata,
    Column("process", String(36), primary_key=True),  # a router process (new at each start)
    Column("key_id", String(36), primary_key=True),
    Column("requests", BigInteger, nullable=False),
    Column("tokens", BigInteger, nullable=False),
    Column("updated_at", Float, nullable=False),  # wall clock, for clearing old rows only
)

users = Table(
    "users",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("username", String(64), nullable=False, unique=True),
    Column("password_hash", String(200), nullable=False),
    Column("role", String(10), nullable=False),  # admin, viewer
    Column("created_at", Float, nullable=False),
    Column("password_changed_at", Float, nullable=False),
    # sha256(issuer, subject) of a single sign-on account (router.access.sso); else NULL
    Column("sso_subject", String(64), nullable=True),
    Index("ix_users_sso_subject", "sso_subject", unique=True),
)

sessions = Table(
    "sessions",
    metadata,
    Column("id", String(64), primary_key=True),  # sha256 of the cookie's secret
    Column("user_id", String(36), nullable=False),
    Column("csrf", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Index("ix_sessions_user", "user_id"),
)


def _private_database_file(path: Path) -> None:
    """Key hashes and request history: readable by this user only. SQLite gives its -wal
    and -shm files the database file's mode."""
    private_folder(path.parent)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    path.chmod(0o600)


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    """Per connection: with WAL, ``synchronous=NORMAL`` syncs at checkpoints instead of on
    every commit. A power cut may lose the last commits, never the file's consistency; the
    default (FULL) made every registration wait for the disk."""
    cursor = connection.cursor()
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


class GroupCommit:
    """Writes that arrive while a transaction runs share the next one (a group commit): a
    burst of registrations costs a few transactions, not one each. Each caller still returns
    only once its own write is committed; when a shared transaction fails, its writes are
    tried again one by one, so that one bad write fails only its own caller."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._pending: list[tuple[Executable, dict[str, Any], asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def execute(self, statement: Executable, values: dict[str, Any]) -> None:
        done = asyncio.get_running_loop().create_future()
        self._pending.append((statement, values, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write())
        await asyncio.shield(done)  # a caller that leaves does not take the others' write

    async def _write(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                async with self._engine.begin() as connection:
                    for statement, values, _ in batch:
                        await connection.execute(statement, values)
            except Exception:
                for statement, values, done in batch:
                    try:
                        async with self._engine.begin() as connection:
                            await connection.execute(statement, values)
                    except Exception as exc:
                        done.set_exception(exc)
                    else:
                        done.set_result(None)
            else:
                for _, _, done in batch:
                    done.set_result(None)


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


async def open_database(url: str, wait_seconds: float = 0.0) -> AsyncEngine:
    """Connect and bring the schema to the newest migration. A database server that is not
    reachable yet (starting beside the router, as in compose or Kubernetes) is waited for up
    to ``wait_seconds``; a refusal such as a wrong password fails at once."""
    if url.startswith("sqlite"):
        _private_database_file(Path(url.split("///", 1)[1]))
    # A database server that stops answering (a partition, a failover) must not hold the
    # router's loops for minutes of TCP retries: bounded connects, statements and pool waits.
    bounded: dict[str, Any] = (
        {"connect_args": {"timeout": 5, "command_timeout": 30}, "pool_timeout": 10}
        if url.startswith("postgresql+asyncpg") else {}
    )  # fmt: skip
    engine = create_async_engine(
        url, pool_pre_ping=not url.startswith("sqlite"),
        # orjson for the JSON columns: the stdlib's decoder was most of a node-table read.
        json_serializer=_json_text, json_deserializer=orjson.loads, **bounded,
    )  # fmt: skip
    if url.startswith("sqlite"):
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    deadline = time.monotonic() + wait_seconds
    delay = 0.5
    while True:
        try:
            async with _sqlite_migration_lock(url), engine.begin() as connection:
                if url.startswith("sqlite"):
                    # WAL: readers (management CLI, dashboards) never block the router's writes.
                    await connection.execute(text("PRAGMA journal_mode=WAL"))
                await connection.run_sync(bring_to_head, metadata)
            return engine
        except Exception as exc:
            reason = _not_reachable_yet(exc)
            if url.startswith("sqlite") or reason is None or time.monotonic() > deadline:
                await engine.dispose()
                raise
            where = make_url(url).render_as_string(hide_password=True)
            log.warning("the database %s is not reachable yet (%s); trying again", where, reason)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def _not_reachable_yet(exc: BaseException) -> str | None:
    """Why the database server cannot be reached, when that may pass (refused, unknown host,
    timed out, starting up); None for an answer that will not change (a wrong password)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError):  # refused, no such host (yet), timed out (TimeoutError)
            return f"{type(seen).__name__}: {seen}"
        if type(seen).__name__ == "CannotConnectNowError":  # asyncpg: the server is starting
            return str(seen)
        seen = getattr(seen, "orig", None) or seen.__cause__
    return None


@contextlib.asynccontextmanager
async def _sqlite_migration_lock(url: str) -> AsyncIterator[None]:
    """SQLite's counterpart of the PostgreSQL advisory lock in ``bring_to_head``: a router and a
    management command starting at once on a new home migrate one after the other."""
    if not url.startswith("sqlite"):
        yield
        return
    descriptor = os.open(url.split("///", 1)[1] + ".migrating", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        await asyncio.to_thread(_lock_exclusively, descriptor)
        yield
    finally:
        os.close(descriptor)  # and with it the lock


def _lock_exclusively(descriptor: int) -> None:
    """Wait for an exclusive lock on an open file: ``flock`` on POSIX, a locked byte on
    Windows (imported here: the router must import on every platform)."""
    if sys.platform == "win32":
        import msvcrt

        while True:
            try:
                msvcrt.locking(descriptor, msvcrt.LK_LOCK, 1)
                return
            except OSError:  # LK_LOCK gives up after 10 s of trying: keep waiting
                continue
    else:
        import fcntl

        fcntl.flock(descriptor, fcntl.LOCK_EX)


async def ping(engine: AsyncEngine) -> bool:
    try:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception:
        return False
    return True
