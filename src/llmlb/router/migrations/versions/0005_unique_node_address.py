"""One row per node address: routers sharing the database register a node once.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Rows that two routers wrote for one node before this index: keep the newest.
    nodes = sa.table("nodes", sa.column("id"), sa.column("name"), sa.column("base_url"),
                     sa.column("last_seen"))  # fmt: skip
    newer = sa.alias(nodes, "newer")
    op.execute(
        nodes.delete().where(
            sa.exists().where(
                newer.c.name == nodes.c.name,
                newer.c.base_url == nodes.c.base_url,
                sa.or_(newer.c.last_seen > nodes.c.last_seen,
                       sa.and_(newer.c.last_seen == nodes.c.last_seen, newer.c.id > nodes.c.id)),
            )
        )
    )  # fmt: skip
    op.create_index("ux_nodes_address", "nodes", ["name", "base_url"], unique=True)


def downgrade() -> None:
    op.drop_index("ux_nodes_address", "nodes")
