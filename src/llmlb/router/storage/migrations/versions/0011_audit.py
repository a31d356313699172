"""The audit trail (router.telemetry.audit): changes made through the admin API.

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("user", sa.String(64), nullable=True),
        sa.Column("key_id", sa.String(36), nullable=True),
        sa.Column("source", sa.String(64), nullable=True),
        sa.Column("action", sa.String(300), nullable=False),
        sa.Column("target", sa.JSON, nullable=True),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("detail", sa.JSON, nullable=True),
    )
    op.create_index("ix_audit_ts", "audit", ["ts"])


def downgrade() -> None:
    op.drop_index("ix_audit_ts", "audit")
    op.drop_table("audit")
