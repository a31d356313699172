"""Endpoints: other OpenAI-compatible servers in the fleet beside llmlb nodes. A node row
gets its kind (``node`` for a node that registers itself), an endpoint's settings, and an
endpoint's API key (which the router must present, so it is kept as given, never shown).

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("nodes", sa.Column("kind", sa.String(20), nullable=False, server_default="node"))
    op.add_column("nodes", sa.Column("endpoint", sa.JSON, nullable=True))
    op.add_column("nodes", sa.Column("secret", sa.String(1000), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("secret")
        batch.drop_column("endpoint")
        batch.drop_column("kind")
