"""Single sign-on accounts (router.access.sso): a user row made at an OpenID Connect login
carries its identity at the provider (the SHA-256 of issuer and subject), by which the next
login finds it; such a user has no password here.

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("users", sa.Column("sso_subject", sa.String(64), nullable=True))
    op.create_index("ix_users_sso_subject", "users", ["sso_subject"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_users_sso_subject", "users")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("sso_subject")
