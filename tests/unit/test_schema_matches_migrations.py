"""The tables the code uses (router.db's metadata) are exactly what the migrations build, on
SQLite and on PostgreSQL: a column added to one and not the other fails here, not in use."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from llmlb.router.db import metadata, open_database


async def test_the_migrations_build_the_tables_the_code_uses(database_url: str) -> None:
    engine = await open_database(database_url)
    async with engine.connect() as connection:
        differences = await connection.run_sync(
            lambda sync: compare_metadata(MigrationContext.configure(sync), metadata)
        )
    await engine.dispose()
    assert differences == []
