"""key policy: scopes, IP allowlists, metadata and external ids, per-key limits, enforced monthly quotas

api_keys gains the policy a verification enforces (scopes: NULL = full access; allowed_ips: cidr[], empty = any
address; rate_limit: requests per minute for the key alone, NULL = only the organization's) and what it returns
(meta: the customer's JSON object; external_id: unique per organization). organizations gains a staff quota
extension for one UTC month.

Two new verification outcomes: forbidden (scope or address refused, 403) and quota_exceeded (429): the usage
check constraint lists them, the rollup tables count them in their own columns, and the rollup trigger and fold
functions of 0003 are regenerated with the new column list (downgrade restores the old ones).

portal_limiter_race() is what the verification statement calls when a counter row it meant to open was opened
concurrently: it raises serialization_failure, so the statement undoes itself and the backend runs it again
(portal/verification/sql.py).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-08 09:00:00.000000
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

OLD_OUTCOMES = ("ok", "malformed", "unknown", "revoked", "expired", "rate_limited")
NEW_OUTCOMES = (*OLD_OUTCOMES, "forbidden", "quota_exceeded")
COUNTED_TABLES = ("usage_rollup_pending", "usage_org_hourly", "usage_key_hourly", "usage_key_daily")
FOLD_LOCK = 7_201_004  # as in 0003


def _functions(outcomes: tuple[str, ...]) -> tuple[str, str]:
    """0003's trigger and fold functions for ``outcomes`` (CREATE OR REPLACE)."""
    counts = ["calls", *outcomes, "latency_ms_sum"]
    cols = ", ".join(counts)
    sums = ", ".join(f"sum({c})" for c in counts)
    add = ", ".join(f"{c} = r.{c} + EXCLUDED.{c}" for c in counts)
    aggregates = ", ".join(
        ["count(*)", *(f"count(*) FILTER (WHERE outcome = '{o}')" for o in outcomes), "coalesce(sum(latency_ms), 0)"]
    )
    key_org, key_env = "(array_agg(organization_id))[1]", "min(environment)"
    trigger = f"""
CREATE OR REPLACE FUNCTION usage_rollup_ingest() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    INSERT INTO usage_rollup_pending (organization_id, key_id, environment, bucket, endpoint, {cols})
    SELECT n.organization_id, k.id, coalesce(k.environment, 'none'), date_trunc('hour', n.occurred_at, 'UTC'),
           coalesce(n.endpoint, ''), {aggregates}
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
    fold = f"""
CREATE OR REPLACE FUNCTION usage_rollup_fold() RETURNS bigint LANGUAGE plpgsql AS $fn$
DECLARE
    folded bigint;
BEGIN
    PERFORM pg_advisory_xact_lock({FOLD_LOCK});
    WITH moved_all AS MATERIALIZED (
        DELETE FROM usage_rollup_pending RETURNING *
    ), moved AS MATERIALIZED (  -- sums of organizations or keys deleted meanwhile are dropped, not folded
        SELECT m.organization_id, CASE WHEN k.id IS NOT NULL THEN m.key_id END AS key_id, m.environment,
               m.bucket, m.endpoint, {cols}
        FROM moved_all m
        JOIN organizations o ON o.id = m.organization_id
        LEFT JOIN api_keys k ON k.id = m.key_id
    ), org_hourly AS (
        INSERT INTO usage_org_hourly AS r (organization_id, bucket, environment, {cols})
        SELECT organization_id, bucket, environment, {sums}
        FROM moved GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
        ON CONFLICT (organization_id, bucket, environment) DO UPDATE SET {add}
    ), key_hourly AS (
        INSERT INTO usage_key_hourly AS r (key_id, bucket, organization_id, environment, {cols})
        SELECT key_id, bucket, {key_org}, {key_env}, {sums}
        FROM moved WHERE key_id IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2
        ON CONFLICT (key_id, bucket) DO UPDATE SET {add}
    ), key_daily AS (
        INSERT INTO usage_key_daily AS r (key_id, day, organization_id, environment, {cols})
        SELECT key_id, (bucket AT TIME ZONE 'UTC')::date, {key_org}, {key_env}, {sums}
        FROM moved WHERE key_id IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2
        ON CONFLICT (key_id, day) DO UPDATE SET {add}
    ), endpoint_hourly AS (
        INSERT INTO usage_endpoint_hourly AS r (organization_id, bucket, endpoint, calls, errors)
        SELECT organization_id, bucket, endpoint, sum(calls), sum(calls - ok)
        FROM moved GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
        ON CONFLICT (organization_id, bucket, endpoint)
        DO UPDATE SET calls = r.calls + EXCLUDED.calls, errors = r.errors + EXCLUDED.errors
    ), key_endpoint_daily AS (
        INSERT INTO usage_key_endpoint_daily AS r (key_id, day, endpoint, organization_id, calls, errors)
        SELECT key_id, (bucket AT TIME ZONE 'UTC')::date, endpoint, {key_org}, sum(calls), sum(calls - ok)
        FROM moved WHERE key_id IS NOT NULL GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
        ON CONFLICT (key_id, day, endpoint)
        DO UPDATE SET calls = r.calls + EXCLUDED.calls, errors = r.errors + EXCLUDED.errors
    )
    SELECT count(*) INTO folded FROM moved_all;
    RETURN folded;
END
$fn$
"""
    return trigger, fold


def _outcome_check(outcomes: tuple[str, ...]) -> str:
    return "outcome IN (" + ", ".join(f"'{o}'" for o in outcomes) + ")"


RACE_FUNCTION = """
CREATE FUNCTION portal_limiter_race() RETURNS int LANGUAGE plpgsql VOLATILE AS $fn$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'serialization_failure',
        MESSAGE = 'a rate-limit counter was opened concurrently; run the verification again';
END
$fn$
"""


def upgrade():
    op.add_column("api_keys", sa.Column("scopes", postgresql.ARRAY(sa.Text()), nullable=True))
    op.add_column(
        "api_keys",
        sa.Column(
            "allowed_ips",
            postgresql.ARRAY(postgresql.CIDR()),
            server_default=sa.text("'{}'::cidr[]"),
            nullable=False,
        ),
    )
    op.add_column("api_keys", sa.Column("rate_limit", sa.Integer(), nullable=True))
    op.add_column(
        "api_keys",
        sa.Column(
            "meta", postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False
        ),
    )
    op.add_column("api_keys", sa.Column("external_id", sa.String(length=128), nullable=True))
    op.create_unique_constraint("uq_api_keys_org_external_id", "api_keys", ["organization_id", "external_id"])
    op.create_check_constraint("ck_api_keys_rate_limit", "api_keys", "rate_limit > 0")
    op.create_check_constraint("ck_api_keys_meta_object", "api_keys", "jsonb_typeof(meta) = 'object'")

    op.add_column("organizations", sa.Column("quota_extension", sa.Integer(), server_default="0", nullable=False))
    op.add_column("organizations", sa.Column("quota_extension_month", sa.Date(), nullable=True))

    op.drop_constraint("ck_api_key_usage_outcome", "api_key_usage", type_="check")
    op.create_check_constraint("ck_api_key_usage_outcome", "api_key_usage", _outcome_check(NEW_OUTCOMES))
    for table in COUNTED_TABLES:
        for column in ("forbidden", "quota_exceeded"):
            op.add_column(table, sa.Column(column, sa.Integer(), server_default="0", nullable=False))
    trigger, fold = _functions(NEW_OUTCOMES)
    op.execute(fold)
    op.execute(trigger)
    op.execute(RACE_FUNCTION)


def downgrade():
    op.execute("DROP FUNCTION IF EXISTS portal_limiter_race()")
    trigger, fold = _functions(OLD_OUTCOMES)
    op.execute(fold)
    op.execute(trigger)
    for table in COUNTED_TABLES:
        for column in ("quota_exceeded", "forbidden"):
            op.drop_column(table, column)
    op.execute(f"DELETE FROM api_key_usage WHERE NOT ({_outcome_check(OLD_OUTCOMES)})")
    op.drop_constraint("ck_api_key_usage_outcome", "api_key_usage", type_="check")
    op.create_check_constraint("ck_api_key_usage_outcome", "api_key_usage", _outcome_check(OLD_OUTCOMES))
    op.execute("DELETE FROM rate_limit_tracking WHERE bucket LIKE 'key:%' OR bucket LIKE 'quota:%'")

    op.drop_column("organizations", "quota_extension_month")
    op.drop_column("organizations", "quota_extension")

    op.drop_constraint("ck_api_keys_meta_object", "api_keys", type_="check")
    op.drop_constraint("ck_api_keys_rate_limit", "api_keys", type_="check")
    op.drop_constraint("uq_api_keys_org_external_id", "api_keys", type_="unique")
    op.drop_column("api_keys", "external_id")
    op.drop_column("api_keys", "meta")
    op.drop_column("api_keys", "rate_limit")
    op.drop_column("api_keys", "allowed_ips")
    op.drop_column("api_keys", "scopes")
