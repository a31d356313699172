"""Starting on a database: routers that start at once on a new database both come up."""

from __future__ import annotations

import asyncio

from sqlalchemy import text

from llmlb.router.storage.db import open_database


async def test_routers_starting_together_migrate_one_after_the_other(database_url: str) -> None:
    starting = asyncio.gather(*(open_database(database_url) for _ in range(4)))
    engines = await asyncio.wait_for(starting, 60)  # without the lock they wait on each other
    try:
        async with engines[0].connect() as connection:
            version = (
                await connection.execute(text("SELECT version_num FROM alembic_version"))
            ).all()
        assert len(version) == 1  # one schema, migrated once, whatever the order
    finally:
        for engine in engines:
            await engine.dispose()
