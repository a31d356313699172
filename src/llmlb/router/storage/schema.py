"""Bringing a router's database to the newest schema, at start.

- A new database gets its tables straight from ``db.metadata`` and is stamped with the newest
  migration, as Alembic's documentation advises for a database built from scratch.
- An older one is upgraded by Alembic, through the migrations in ``router/storage/migrations``.
- A current one is left alone.

Alembic, with Mako and Pygments, is imported only for an upgrade: 10 MiB of resident memory
that a router on a new or current database never carries.
``tests/unit/router/storage/test_schema_matches_migrations.py`` checks that both ways build
the same tables.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import (
    Column,
    Connection,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    insert,
    inspect,
    select,
    text,
)

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger(__name__)

HEAD = "0013"  # the newest migration's revision (checked against the migrations by a test)
MIGRATIONS = Path(__file__).parent / "migrations"
# Any fixed number: the key of the advisory lock that routers migrate under.
_MIGRATION_LOCK = 0x6C6D6C62  # "lmlb"
# Alembic's own record of the revision, as Alembic creates it.
_VERSION = Table(
    "alembic_version",
    MetaData(),
    Column("version_num", String(32), nullable=False),
    PrimaryKeyConstraint("version_num", name="alembic_version_pkc"),
)


def bring_to_head(connection: Connection, metadata: MetaData) -> None:
    if connection.dialect.name == "postgresql":
        # Routers that start at once migrate one after the other: the second finds the
        # schema current. The lock is the transaction's, released when it commits.
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
    tables = set(inspect(connection).get_table_names())
    if _VERSION.name in tables:
        if connection.execute(select(_VERSION.c.version_num)).scalar() == HEAD:
            return
    elif not tables & set(metadata.tables):
        metadata.create_all(connection)
        _VERSION.create(connection)
        connection.execute(insert(_VERSION).values(version_num=HEAD))
        log.info("database schema created at %s", HEAD)
        return
    migrate(connection)


def migrate(connection: Connection, revision: str = "head") -> None:
    """Alembic's upgrade, from wherever the database is to ``revision``."""
    from alembic import command
    from alembic.runtime.migration import MigrationContext

    config = alembic_config()
    config.attributes["connection"] = connection
    before = MigrationContext.configure(connection).get_current_revision()
    command.upgrade(config, revision)
    after = MigrationContext.configure(connection).get_current_revision()
    if after != before:
        log.info("database schema migrated from %s to %s", before or "empty", after)


def alembic_config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config
