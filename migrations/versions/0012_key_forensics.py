"""key forensics: the caller's address and user agent on usage rows, and a rollup of each key's clients

api_key_usage gains client_ip (inet) and user_agent (text, at most 256 characters), both as given to
verification and NULL when not given: nullable columns without a default, so adding them rewrites nothing.

Two rollups answer "who uses this key, from where" without reading raw events, with the calls and the first
and last call of each key's address and user agent: usage_key_clients_daily per UTC day (the 7- and 30-day
views; its size grows with clients, not calls) and usage_key_clients_hourly per UTC hour for the last 48 hours
only (the exact last 24 hours; older hours are deleted by each fold). They are fed like the other rollups
(0003): a second statement-level trigger on api_key_usage appends each insert's sums to usage_client_pending
(append-only, so writers never wait on each other), and usage_clients_fold() moves them into both under its
own advisory lock; the trigger folds on about 1 in 100 inserts and pages fold before they read. The
rollups keep the address as text (host(client_ip)) and the user agent with '' for "not given", so both can be
part of the primary key.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02 11:40:00.000000
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

CLIENTS_FOLD_LOCK = 7_201_006  # advisory lock id shared by every clients folder
HOURLY_KEPT = "interval '48 hours'"  # the hourly clients rollup serves the last 24 hours; a day spare

INGEST_FUNCTION = f"""
CREATE FUNCTION usage_clients_ingest() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    INSERT INTO usage_client_pending
        (organization_id, key_id, bucket, client_ip, user_agent, calls, first_seen, last_seen)
    SELECT n.organization_id, n.key_id, date_trunc('hour', n.occurred_at, 'UTC'), coalesce(host(n.client_ip), ''),
           coalesce(n.user_agent, ''), count(*), min(n.occurred_at), max(n.occurred_at)
    FROM new_rows n
    WHERE n.key_id IS NOT NULL AND n.organization_id IS NOT NULL
    GROUP BY 1, 2, 3, 4, 5;
    IF random() < 0.01 AND pg_try_advisory_xact_lock({CLIENTS_FOLD_LOCK}) THEN
        BEGIN  -- a fold that fails must never fail the caller's insert; pages fold again later
            PERFORM usage_clients_fold();
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'usage_clients_fold skipped: %', SQLERRM;
        END;
    END IF;
    RETURN NULL;
END
$fn$
"""

# Sums of keys deleted meanwhile are dropped; rows are upserted in index order, one folder at a time.
FOLD_FUNCTION = f"""
CREATE FUNCTION usage_clients_fold() RETURNS bigint LANGUAGE plpgsql AS $fn$
DECLARE
    folded bigint;
BEGIN
    PERFORM pg_advisory_xact_lock({CLIENTS_FOLD_LOCK});
    WITH moved_all AS MATERIALIZED (
        DELETE FROM usage_client_pending RETURNING *
    ), moved AS MATERIALIZED (
        SELECT m.key_id, m.bucket, m.client_ip, m.user_agent, k.organization_id, m.calls, m.first_seen, m.last_seen
        FROM moved_all m JOIN api_keys k ON k.id = m.key_id AND k.organization_id = m.organization_id
    ), hourly AS (
        INSERT INTO usage_key_clients_hourly AS r
            (key_id, bucket, client_ip, user_agent, organization_id, calls, first_seen, last_seen)
        SELECT key_id, bucket, client_ip, user_agent, organization_id, sum(calls), min(first_seen), max(last_seen)
        FROM moved WHERE bucket >= statement_timestamp() - {HOURLY_KEPT}
        GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4
        ON CONFLICT (key_id, bucket, client_ip, user_agent) DO UPDATE
        SET calls = r.calls + EXCLUDED.calls, first_seen = least(r.first_seen, EXCLUDED.first_seen),
            last_seen = greatest(r.last_seen, EXCLUDED.last_seen)
    ), daily AS (
        INSERT INTO usage_key_clients_daily AS r
            (key_id, day, client_ip, user_agent, organization_id, calls, first_seen, last_seen)
        SELECT key_id, (bucket AT TIME ZONE 'UTC')::date, client_ip, user_agent, organization_id, sum(calls),
               min(first_seen), max(last_seen)
        FROM moved GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4
        ON CONFLICT (key_id, day, client_ip, user_agent) DO UPDATE
        SET calls = r.calls + EXCLUDED.calls, first_seen = least(r.first_seen, EXCLUDED.first_seen),
            last_seen = greatest(r.last_seen, EXCLUDED.last_seen)
    )
    SELECT count(*) INTO folded FROM moved_all;
    DELETE FROM usage_key_clients_hourly WHERE bucket < statement_timestamp() - {HOURLY_KEPT};
    RETURN folded;
END
$fn$
"""


def upgrade():
    op.add_column("api_key_usage", sa.Column("client_ip", postgresql.INET(), nullable=True))
    op.add_column("api_key_usage", sa.Column("user_agent", sa.String(length=256), nullable=True))
    op.create_table(
        "usage_client_pending",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("organization_id", sa.UUID(), nullable=False),
        sa.Column("key_id", sa.UUID(), nullable=False),
        sa.Column("bucket", sa.DateTime(timezone=True), nullable=False),
        sa.Column("client_ip", sa.String(length=45), nullable=False),
        sa.Column("user_agent", sa.String(length=256), nullable=False),
        sa.Column("calls", sa.Integer(), nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "usage_key_clients_hourly",
        sa.Column("key_id", sa.UUID(), nullable=False),
        sa.Column("bucket", sa.DateTime(timezone=True), nullable=False),
        sa.Column("client_ip", sa.String(length=45), nullable=False),
        sa.Column("user_agent", sa.String(length=256), nullable=False),
        sa.Column("organization_id", sa.UUID(), nullable=False),
        sa.Column("calls", sa.Integer(), nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["key_id"], ["api_keys.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["organization_id"], ["organizations.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("key_id", "bucket", "client_ip", "user_agent"),
    )
    op.create_index(
        "ix_usage_key_clients_hourly_bucket", "usage_key_clients_hourly", ["bucket"], postgresql_using="brin"
    )
    op.create_table(
        "usage_key_clients_daily",
        sa.Column("key_id", sa.UUID(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("client_ip", sa.String(length=45), nullable=False),
        sa.Column("user_agent", sa.String(length=256), nullable=False),
        sa.Column("organization_id", sa.UUID(), nullable=False),
        sa.Column("calls", sa.Integer(), nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["key_id"], ["api_keys.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["organization_id"], ["organizations.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("key_id", "day", "client_ip", "user_agent"),
    )
    op.create_index("ix_usage_key_clients_daily_org_day", "usage_key_clients_daily", ["organization_id", "day"])
    op.execute(FOLD_FUNCTION)
    op.execute(INGEST_FUNCTION)
    op.execute(
        "CREATE TRIGGER api_key_usage_clients AFTER INSERT ON api_key_usage "
        "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION usage_clients_ingest()"
    )


def downgrade():
    op.execute("DROP TRIGGER IF EXISTS api_key_usage_clients ON api_key_usage")
    op.execute("DROP FUNCTION IF EXISTS usage_clients_ingest()")
    op.execute("DROP FUNCTION IF EXISTS usage_clients_fold()")
    op.drop_table("usage_key_clients_daily")
    op.drop_table("usage_key_clients_hourly")
    op.drop_table("usage_client_pending")
    op.drop_column("api_key_usage", "user_agent")
    op.drop_column("api_key_usage", "client_ip")
