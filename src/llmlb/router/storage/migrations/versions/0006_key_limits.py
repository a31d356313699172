"""Per-key limits: requests and tokens per minute, and the models a key may use.

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
    op.add_column("api_keys", sa.Column("requests_per_minute", sa.Integer, nullable=True))
    op.add_column("api_keys", sa.Column("tokens_per_minute", sa.Integer, nullable=True))
    op.add_column("api_keys", sa.Column("models", sa.JSON, nullable=True))


def downgrade() -> None:
    for column in ("models", "tokens_per_minute", "requests_per_minute"):
        op.drop_column("api_keys", column)
