"""invalid key counts: calls with malformed or unknown keys counted per minute and address, not one row each

api_invalid_key_counts holds, per UTC minute, client address (NULL when unknown) and outcome (malformed,
unknown, too_many_invalid_keys), how many calls there were; the usage writer upserts its sums. The malformed
and unknown rows api_key_usage already holds are moved into it (their address was never stored: NULL) and
deleted. They belong to no organization, so no rollup changes. Downgrade turns the counts back into one
usage row per malformed or unknown call (endpoint and latency unknown) and drops the table.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-20 09:00:00.000000
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

OUTCOMES = ("malformed", "unknown", "too_many_invalid_keys")


def upgrade():
    op.create_table(
        "api_invalid_key_counts",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("minute", sa.DateTime(timezone=True), nullable=False),
        sa.Column("client_ip", postgresql.INET(), nullable=True),
        sa.Column("outcome", sa.String(length=30), nullable=False),
        sa.Column("calls", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "outcome IN ({})".format(", ".join(f"'{o}'" for o in OUTCOMES)),
            name="ck_api_invalid_key_counts_outcome",
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ux_api_invalid_key_counts",
        "api_invalid_key_counts",
        ["minute", "client_ip", "outcome"],
        unique=True,
        postgresql_nulls_not_distinct=True,
    )
    op.execute(
        """
        INSERT INTO api_invalid_key_counts (minute, client_ip, outcome, calls)
        SELECT date_trunc('minute', occurred_at, 'UTC'), NULL, outcome, count(*)
        FROM api_key_usage WHERE organization_id IS NULL AND outcome IN ('malformed', 'unknown')
        GROUP BY 1, 3
        """
    )
    op.execute("DELETE FROM api_key_usage WHERE organization_id IS NULL AND outcome IN ('malformed', 'unknown')")


def downgrade():
    op.execute(
        """
        INSERT INTO api_key_usage (key_id, organization_id, occurred_at, endpoint, status_code, latency_ms, outcome)
        SELECT NULL, NULL, c.minute, NULL, 401, NULL, c.outcome
        FROM api_invalid_key_counts c, generate_series(1, c.calls)
        WHERE c.outcome IN ('malformed', 'unknown')
        """
    )
    op.drop_index("ux_api_invalid_key_counts", table_name="api_invalid_key_counts")
    op.drop_table("api_invalid_key_counts")
