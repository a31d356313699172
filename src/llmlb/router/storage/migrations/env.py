"""Alembic environment: runs on the connection the router hands over (see router.storage.schema)."""

from alembic import context

from llmlb.router.storage.db import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
