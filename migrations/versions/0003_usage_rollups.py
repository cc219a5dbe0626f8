"""usage rollups: pre-aggregated counts, fed by a statement-level trigger on api_key_usage

Every INSERT into api_key_usage (one row or a multi-row batch, from any writer) fires one AFTER INSERT ... FOR EACH
STATEMENT trigger. It aggregates the statement's transition table by organization, key, environment, UTC hour and
endpoint, and APPENDS those sums to usage_rollup_pending: no upsert, so concurrent writers of one busy
organization never wait on each other's row locks (upserting the shared rollup rows from every writer made a
single organization's inserts 4x slower in pgbench). usage_rollup_fold() moves pending sums into the five rollup
tables (DELETE ... RETURNING, then INSERT ... ON CONFLICT DO UPDATE, under an advisory lock so one folder runs at a
time). It runs before every usage page is read, after each bulk chunk, from `flask usage fold`, and on about 1 in
100 insert statements (only if no other fold is running: pg_try_advisory_xact_lock), which keeps pending small.

Raw rows are never updated and a DELETE (retention) leaves the rollups alone, so rollups outlive the raw events.
api_key_usage itself stays a plain table: on PostgreSQL 15 a partitioned table cannot have the identity column
and single-column primary key the model declares, and a BRIN index on occurred_at keeps the retention delete
cheap at tens of millions of rows.

Numbering: no revision 0002 was ever committed (this one follows 0001 directly, see down_revision); revision
numbers need not be contiguous, and the next migration is 0004.

Revision ID: 0003
Revises: 0001
Create Date: 2026-11-24 08:07:26.007620

"""

import sqlalchemy as sa
from alembic import op

OUTCOMES = ("ok", "malformed", "unknown", "revoked", "expired", "rate_limited")
COUNTS = ["calls", *OUTCOMES, "latency_ms_sum"]
_COUNTS = ", ".join(COUNTS)
_SUMS = ", ".join(f"sum({c})" for c in COUNTS)
_ADD = ", ".join(f"{c} = r.{c} + EXCLUDED.{c}" for c in COUNTS)
_AGGREGATES = ", ".join(
    ["count(*)", *(f"count(*) FILTER (WHERE outcome = '{o}')" for o in OUTCOMES), "coalesce(sum(latency_ms), 0)"]
)
FOLD_LOCK = 7_201_004  # pg_advisory lock id shared by every folder
# A key's organization and environment never change; taking them by aggregate keeps one row per conflict key.
_KEY_ORG = "(array_agg(organization_id))[1]"
_KEY_ENV = "min(environment)"

# Append-only and planned once per session. A key counts for its own organization only.
TRIGGER_FUNCTION = f"""
CREATE FUNCTION usage_rollup_ingest() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    INSERT INTO usage_rollup_pending (organization_id, key_id, environment, bucket, endpoint, {_COUNTS})
    SELECT n.organization_id, k.id, coalesce(k.environment, 'none'), date_trunc('hour', n.occurred_at, 'UTC'),
           coalesce(n.endpoint, ''), {_AGGREGATES}
    FROM new_rows n
    LEFT JOIN api_keys k ON k.id = n.key_id AND k.organization_id = n.organization_id
    WHERE n.organization_id IS NOT NULL
    GROUP BY 1, 2, 3, 4, 5;
    IF random() < 0.01 AND pg_try_advisory_xact_lock({FOLD_LOCK}) THEN
        BEGIN  -- a fold that fails must never fail the caller's insert; pages fold again later
            PERFORM usage_rollup_fold();
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'usage_rollup_fold skipped: %', SQLERRM;
        END;
    END IF;
    RETURN NULL;
END
$fn$
"""

# Rows are upserted sorted by key; the advisory lock means one folder at a time anyway.
FOLD_FUNCTION = f"""
CREATE FUNCTION usage_rollup_fold() RETURNS bigint LANGUAGE plpgsql AS $fn$
DECLARE
    folded bigint;
BEGIN
    PERFORM pg_advisory_xact_lock({FOLD_LOCK});
    WITH moved_all AS MATERIALIZED (
        DELETE FROM usage_rollup_pending RETURNING *
    ), moved AS MATERIALIZED (  -- sums of organizations or keys deleted meanwhile are dropped, not folded
        SELECT m.organization_id, CASE WHEN k.id IS NOT NULL THEN m.key_id END AS key_id, m.environment,
               m.bucket, m.endpoint, {_COUNTS}
        FROM moved_all m
        JOIN organizations o ON o.id = m.organization_id
        LEFT JOIN api_keys k ON k.id = m.key_id
    ), org_hourly AS (
        INSERT INTO usage_org_hourly AS r (organization_id, bucket, environment, {_COUNTS})
        SELECT organization_id, bucket, environment, {_SUMS}
        FROM moved GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
        ON CONFLICT (organization_id, bucket, environment) DO UPDATE SET {_ADD}
    ), key_hourly AS (
        INSERT INTO usage_key_hourly AS r (key_id, bucket, organization_id, environment, {_COUNTS})
        SELECT key_id, bucket, {_KEY_ORG}, {_KEY_ENV}, {_SUMS}
        FROM moved WHERE key_id IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2
        ON CONFLICT (key_id, bucket) DO UPDATE SET {_ADD}
    ), key_daily AS (
        INSERT INTO usage_key_daily AS r (key_id, day, organization_id, environment, {_COUNTS})
        SELECT key_id, (bucket AT TIME ZONE 'UTC')::date, {_KEY_ORG}, {_KEY_ENV}, {_SUMS}
        FROM moved WHERE key_id IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2
        ON CONFLICT (key_id, day) DO UPDATE SET {_ADD}
    ), endpoint_hourly AS (
        INSERT INTO usage_endpoint_hourly AS r (organization_id, bucket, endpoint, calls, errors)
        SELECT organization_id, bucket, endpoint, sum(calls), sum(calls - ok)
        FROM moved GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
        ON CONFLICT (organization_id, bucket, endpoint)
        DO UPDATE SET calls = r.calls + EXCLUDED.calls, errors = r.errors + EXCLUDED.errors
    ), key_endpoint_daily AS (
        INSERT INTO usage_key_endpoint_daily AS r (key_id, day, endpoint, organization_id, calls, errors)
        SELECT key_id, (bucket AT TIME ZONE 'UTC')::date, endpoint, {_KEY_ORG}, sum(calls), sum(calls - ok)
        FROM moved WHERE key_id IS NOT NULL GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
        ON CONFLICT (key_id, day, endpoint)
        DO UPDATE SET calls = r.calls + EXCLUDED.calls, errors = r.errors + EXCLUDED.errors
    )
    SELECT count(*) INTO folded FROM moved_all;
    RETURN folded;
END
$fn$
"""

# revision identifiers, used by Alembic.
revision = "0003"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade():
    # ### commands auto generated by Alembic - please adjust! ###
    op.create_table(
        "usage_rollup_pending",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("organization_id", sa.UUID(), nullable=False),
        sa.Column("key_id", sa.UUID(), nullable=True),
        sa.Column("environment", sa.String(length=7), nullable=False),
        sa.Column("bucket", sa.DateTime(timezone=True), nullable=False),
        sa.Column("endpoint", sa.String(length=200), nullable=False),
        sa.Column("calls", sa.Integer(), server_default="0", nullable=False),
        sa.Column("ok", sa.Integer(), server_default="0", nullable=False),
        sa.Column("malformed", sa.Integer(), server_default="0", nullable=False),
        sa.Column("unknown", sa.Integer(), server_default="0", nullable=False),
        sa.Column("revoked", sa.Integer(), server_default="0", nullable=False),
        sa.Column("expired", sa.Integer(), server_default="0", nullable=False),
        sa.Column("rate_limited", sa.Integer(), server_default="0", nullable=False),
        sa.Column("latency_ms_sum", sa.Float(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "usage_endpoint_hourly",
        sa.Column("organization_id", sa.UUID(), nullable=False),
        sa.Column("bucket", sa.DateTime(timezone=True), nullable=False),
        sa.Column("endpoint", sa.String(length=200), nullable=False),
        sa.Column("calls", sa.Integer(), server_default="0", nullable=False),
        sa.Column("errors", sa.Integer(), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(["organization_id"], ["organizations.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("organization_id", "bucket", "endpoint"),
    )
    op.create_table(
        "usage_org_hourly",
        sa.Column("organization_id", sa.UUID(), nullable=False),
        sa.Column("bucket", sa.DateTime(timezone=True), nullable=False),
        sa.Column("environment", sa.String(length=7), nullable=False),
        sa.Column("calls", sa.Integer(), server_default="0", nullable=False),
        sa.Column("ok", sa.Integer(), server_default="0", nullable=False),
        sa.Column("malformed", sa.Integer(), server_default="0", nullable=False),
        sa.Column("unknown", sa.Integer(), server_default="0", nullable=False),
        sa.Column("revoked", sa.Integer(), server_default="0", nullable=False),
        sa.Column("expired", sa.Integer(), server_default="0", nullable=False),
        sa.Column("rate_limited", sa.Integer(), server_default="0", nullable=False),
        sa.Column("latency_ms_sum", sa.Float(), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(["organization_id"], ["organizations.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("organization_id", "bucket", "environment"),
    )
    op.create_table(
        "usage_key_daily",
        sa.Column("key_id", sa.UUID(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("organization_id", sa.UUID(), nullable=False),
        sa.Column("environment", sa.String(length=7), nullable=False),
        sa.Column("calls", sa.Integer(), server_default="0", nullable=False),
        sa.Column("ok", sa.Integer(), server_default="0", nullable=False),
        sa.Column("malformed", sa.Integer(), server_default="0", nullable=False),
        sa.Column("unknown", sa.Integer(), server_default="0", nullable=False),
        sa.Column("revoked", sa.Integer(), server_default="0", nullable=False),
        sa.Column("expired", sa.Integer(), server_default="0", nullable=False),
        sa.Column("rate_limited", sa.Integer(), server_default="0", nullable=False),
        sa.Column("latency_ms_sum", sa.Float(), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(["key_id"], ["api_keys.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["organization_id"], ["organizations.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("key_id", "day"),
    )
    with op.batch_alter_table("usage_key_daily", schema=None) as batch_op:
        batch_op.create_index("ix_usage_key_daily_org_day", ["organization_id", "day"], unique=False)

    op.create_table(
        "usage_key_endpoint_daily",
        sa.Column("key_id", sa.UUID(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("endpoint", sa.String(length=200), nullable=False),
        sa.Column("organization_id", sa.UUID(), nullable=False),
        sa.Column("calls", sa.Integer(), server_default="0", nullable=False),
        sa.Column("errors", sa.Integer(), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(["key_id"], ["api_keys.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["organization_id"], ["organizations.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("key_id", "day", "endpoint"),
    )
    op.create_table(
        "usage_key_hourly",
        sa.Column("key_id", sa.UUID(), nullable=False),
        sa.Column("bucket", sa.DateTime(timezone=True), nullable=False),
        sa.Column("organization_id", sa.UUID(), nullable=False),
        sa.Column("environment", sa.String(length=7), nullable=False),
        sa.Column("calls", sa.Integer(), server_default="0", nullable=False),
        sa.Column("ok", sa.Integer(), server_default="0", nullable=False),
        sa.Column("malformed", sa.Integer(), server_default="0", nullable=False),
        sa.Column("unknown", sa.Integer(), server_default="0", nullable=False),
        sa.Column("revoked", sa.Integer(), server_default="0", nullable=False),
        sa.Column("expired", sa.Integer(), server_default="0", nullable=False),
        sa.Column("rate_limited", sa.Integer(), server_default="0", nullable=False),
        sa.Column("latency_ms_sum", sa.Float(), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(["key_id"], ["api_keys.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["organization_id"], ["organizations.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("key_id", "bucket"),
    )
    with op.batch_alter_table("usage_key_hourly", schema=None) as batch_op:
        batch_op.create_index("ix_usage_key_hourly_org_bucket", ["organization_id", "bucket"], unique=False)

    with op.batch_alter_table("api_key_usage", schema=None) as batch_op:
        batch_op.create_index("ix_api_key_usage_occurred_brin", ["occurred_at"], unique=False, postgresql_using="brin")

    # ### end Alembic commands ###
    # Every pending row is deleted soon after it is written: vacuum it eagerly so folds never wade through a
    # long trail of dead rows.
    op.execute(
        "ALTER TABLE usage_rollup_pending SET (autovacuum_vacuum_threshold = 1000,"
        " autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_insert_threshold = 1000,"
        " autovacuum_vacuum_cost_delay = 0)"
    )
    op.execute(FOLD_FUNCTION)
    op.execute(TRIGGER_FUNCTION)
    op.execute(
        "CREATE TRIGGER api_key_usage_rollup AFTER INSERT ON api_key_usage "
        "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION usage_rollup_ingest()"
    )


def downgrade():
    op.execute("DROP TRIGGER IF EXISTS api_key_usage_rollup ON api_key_usage")
    op.execute("DROP FUNCTION IF EXISTS usage_rollup_ingest()")
    op.execute("DROP FUNCTION IF EXISTS usage_rollup_fold()")
    # ### commands auto generated by Alembic - please adjust! ###
    with op.batch_alter_table("api_key_usage", schema=None) as batch_op:
        batch_op.drop_index("ix_api_key_usage_occurred_brin", postgresql_using="brin")

    with op.batch_alter_table("usage_key_hourly", schema=None) as batch_op:
        batch_op.drop_index("ix_usage_key_hourly_org_bucket")

    op.drop_table("usage_key_hourly")
    op.drop_table("usage_key_endpoint_daily")
    with op.batch_alter_table("usage_key_daily", schema=None) as batch_op:
        batch_op.drop_index("ix_usage_key_daily_org_day")

    op.drop_table("usage_key_daily")
    op.drop_table("usage_org_hourly")
    op.drop_table("usage_endpoint_hourly")
    op.drop_table("usage_rollup_pending")
    # ### end Alembic commands ###
