"""What the router wants on each node (nodes fetch what they lack).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("nodes", sa.Column("assigned", sa.JSON, nullable=True))
    # Bumped with every change of the list: other routers read the list again when it moves.
    op.add_column(
        "nodes", sa.Column("assigned_version", sa.Integer, nullable=False, server_default="0")
    )


def downgrade() -> None:
    op.drop_column("nodes", "assigned_version")
    op.drop_column("nodes", "assigned")
