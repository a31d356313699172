"""Tasks owned by one router at a time, under a lease that the others take over.

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
    op.add_column("tasks", sa.Column("owner", sa.String(36), nullable=True))
    op.add_column("tasks", sa.Column("lease_until", sa.Float, nullable=True))


def downgrade() -> None:
    op.drop_column("tasks", "lease_until")
    op.drop_column("tasks", "owner")
