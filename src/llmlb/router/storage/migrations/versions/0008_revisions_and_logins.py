"""Key revisions (routers read only the keys changed since they last looked), failed logins
shared by routers, and the signed-in user of a request in its history row.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "api_keys", sa.Column("revision", sa.BigInteger, nullable=False, server_default="0")
    )
    op.create_index("ix_api_keys_revision", "api_keys", ["revision"])
    op.create_table(
        "revisions",
        sa.Column("topic", sa.String(50), primary_key=True),
        sa.Column("value", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "login_failures",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("who", sa.String(100), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
    )
    op.create_index("ix_login_failures_who_at", "login_failures", ["who", "at"])
    op.add_column("requests", sa.Column("user", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        batch.drop_column("user")
    op.drop_table("login_failures")
    op.drop_table("revisions")
    op.drop_index("ix_api_keys_revision", "api_keys")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("revision")
