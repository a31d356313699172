"""Tasks owned by one router at a time, under a lease that the others take over.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tasks", sa.Column("owner", sa.String(36), nullable=True))
    op.add_column("tasks", sa.Column("lease_until", sa.Float, nullable=True))


def downgrade() -> None:
    op.drop_column("tasks", "lease_until")
    op.drop_column("tasks", "owner")
