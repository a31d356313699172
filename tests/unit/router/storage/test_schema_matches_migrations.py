"""A router's schema is the same however its database got it, on SQLite and on PostgreSQL:
the migrations build exactly the tables the code uses (router.storage.db's metadata), a new database
built straight from those tables is stamped as current, and an older one is migrated."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from llmlb.router.storage.db import api_keys, metadata, open_database
from llmlb.router.storage.schema import HEAD, alembic_config, migrate


def _differences(connection: Connection) -> list[Any]:
    return list(compare_metadata(MigrationContext.configure(connection), metadata))


def _revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def _schema_of(engine: AsyncEngine) -> tuple[list[Any], str | None]:
    async with engine.connect() as connection:
        differences = await connection.run_sync(_differences)
        revision = await connection.run_sync(_revision)
    await engine.dispose()
    return differences, revision


def test_head_is_the_newest_migration() -> None:
    assert ScriptDirectory.from_config(alembic_config()).get_current_head() == HEAD


async def test_the_migrations_build_the_tables_the_code_uses(database_url: str) -> None:
    engine = create_async_engine(database_url)
    async with engine.begin() as connection:
        await connection.run_sync(migrate)
    assert await _schema_of(engine) == ([], HEAD)


async def test_a_new_database_is_built_from_the_tables_without_loading_alembic(
    database_url: str,
) -> None:
    started = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", "import asyncio, sys\n"
         "from llmlb.router.storage.db import open_database\n"
         f"asyncio.run(open_database({database_url!r}))\n"
         "print(sorted(m for m in sys.modules if m.split('.')[0] in ('alembic', 'mako')))"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    assert started.stdout.strip() == "[]", started.stderr
    assert await _schema_of(create_async_engine(database_url)) == ([], HEAD)


async def test_an_older_database_is_migrated_and_keeps_its_rows(database_url: str) -> None:
    engine = create_async_engine(database_url)
    async with engine.begin() as connection:
        await connection.run_sync(migrate, "0005")
        await connection.execute(insert(api_keys).values(
            id="k1", name="ci", scopes="api", secret_hash="h" * 64, prefix="sk-ab", created_at=1.0,
        ))  # fmt: skip
    await engine.dispose()
    engine = await open_database(database_url)
    async with engine.connect() as connection:
        names = (await connection.execute(select(api_keys.c.name))).scalars().all()
    assert names == ["ci"]
    assert await _schema_of(engine) == ([], HEAD)
