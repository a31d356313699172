"""The router"s database: SQLite by default, PostgreSQL for several routers.

- ``db``: the engine and the tables (SQLAlchemy Core), opened with pragmas that suit each.
- ``schema``, ``migrations/``: the database brought to the newest schema at start (Alembic).
- ``revisions``: how routers on one database learn what another changed (with PostgreSQL"s
  NOTIFY where there is one).
"""

from typing import TYPE_CHECKING

from llmlb.common.exports import exported, lazy_exports

if TYPE_CHECKING:
    from llmlb.router.storage.db import open_database as open_database, ping as ping
    from llmlb.router.storage.revisions import RevisionListener as RevisionListener

_OWNERS = {
    "db": ["open_database", "ping"],
    "revisions": ["RevisionListener"],
}
__all__ = exported(_OWNERS)
__getattr__ = lazy_exports(__name__, _OWNERS)
