"""The request history at hundreds of millions of rows (router.telemetry.history): an index
per filter the API offers, each ending in the time, so a filtered page reads only its rows;
and ``request_minutes``, the requests, errors, tokens and latencies of each minute, which the
history's writer keeps up to date with each batch, so the dashboard's day of per-minute
figures reads 1,440 rows, not a day of requests.

The last day of existing history is summed into ``request_minutes`` here (the dashboard reads
a day at most); on a large history this and the indexes take a while, once.

Revision ID: 0013
Revises: 0012
"""

import time

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

FILTER_INDEXES = {
    "ix_requests_node_ts": ["node_id", "ts"],
    "ix_requests_key_ts": ["key_id", "ts"],
    "ix_requests_user_ts": ["user", "ts"],
    "ix_requests_status_ts": ["status", "ts"],
}


def upgrade() -> None:
    for name, columns in FILTER_INDEXES.items():
        op.create_index(name, "requests", columns)
    op.create_table(
        "request_minutes",
        sa.Column("minute", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("requests", sa.BigInteger, nullable=False),
        sa.Column("errors", sa.BigInteger, nullable=False),
        sa.Column("tokens_out", sa.BigInteger, nullable=False),
        sa.Column("latency_ms_sum", sa.Float, nullable=False),
        sa.Column("ttft_ms_sum", sa.Float, nullable=False),
        sa.Column("ttft_count", sa.BigInteger, nullable=False),
    )
    # floor, not CAST: PostgreSQL's CAST to an integer rounds.
    postgres = op.get_bind().dialect.name == "postgresql"
    minute = "floor(ts / 60)" if postgres else "CAST(ts / 60 AS INTEGER)"
    op.execute(sa.text(
        "INSERT INTO request_minutes (minute, requests, errors, tokens_out, latency_ms_sum, "
        "ttft_ms_sum, ttft_count) "
        f"SELECT {minute}, count(*), sum(CASE WHEN status >= 400 THEN 1 ELSE 0 END), "
        "coalesce(sum(tokens_out), 0), sum(latency_ms), coalesce(sum(ttft_ms), 0), count(ttft_ms) "
        f"FROM requests WHERE ts >= :since GROUP BY {minute}"
    ).bindparams(since=(time.time() // 60 - 1440) * 60))  # fmt: skip


def downgrade() -> None:
    op.drop_table("request_minutes")
    for name in FILTER_INDEXES:
        op.drop_index(name, "requests")
