"""Models registered from the hub: catalog entries kept in the database, so that every
router sees them and they outlive restarts.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "registered_models",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("entry", sa.JSON, nullable=False),
        sa.Column("tier_min_gpu_memory_bytes", sa.BigInteger, nullable=True),
        sa.Column("registered_at", sa.Float, nullable=False),
        sa.Column("registered_by", sa.String(200), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("registered_models")
