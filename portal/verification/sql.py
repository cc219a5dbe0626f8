"""The SQL of one verification, kept in one place so the app, the tests and ``pgbench`` run the same text.

The whole check (key lookup, organization and plan, status at the call's time, the rate-limit upsert) is one
statement with CTEs, prepared once per connection: one round trip, no re-parse or re-plan per call. Plan
limits come from :mod:`portal.plans`, the single definition, and are baked into the statement text.
Time is ``statement_timestamp()``: the same as ``now()`` for an autocommit statement, and still the call's own
time when the statement runs inside a longer transaction (as in the test suite).
"""

from __future__ import annotations

from portal.plans import PLANS

WINDOW_SECONDS = 60
STATEMENT_NAME = "portal_verify_v1"
BUCKET_PREFIX = "org:"
WINDOW = f"interval '{WINDOW_SECONDS} seconds'"
WINDOW_START = f"to_timestamp(floor(extract(epoch FROM statement_timestamp()) / {WINDOW_SECONDS}) * {WINDOW_SECONDS})"


def _limit_case() -> str:
    whens = " ".join(f"WHEN '{p.name}' THEN {int(p.requests_per_minute)}" for p in PLANS.values())
    return f"CASE o.plan {whens} ELSE 0 END"


def _key_columns() -> str:
    """What both verification statements read per key: its organization, status now, limit and window."""
    return f"""k.id, k.organization_id, k.environment, o.slug, o.plan,
           CASE WHEN k.revoked_at <= statement_timestamp() THEN 'revoked'
                WHEN k.expires_at <= statement_timestamp() THEN 'expired'
                ELSE 'ok' END AS status,
           {_limit_case()} AS lim,
           '{BUCKET_PREFIX}' || k.organization_id::text AS bucket,
           {WINDOW_START} AS window_start"""  # noqa: S608 - only our own constants


def verify_statement(param: str = "$1") -> str:
    """The verification for the key hash in ``param``; no row means no such key.

    Columns: key id, organization id, slug, plan, environment, status (``ok``/``revoked``/``expired``), the
    plan's per-minute limit, the window's count including this call (for a usable key), seconds until the
    window resets, and the database's time of the call.

    Admission is decided only by the atomic ``INSERT … ON CONFLICT DO UPDATE … RETURNING``: its row lock
    serialises concurrent increments, each sees a distinct count, and a call is admitted iff its count is
    ``<= limit`` — so exactly ``min(limit, calls)`` calls are admitted per window. Once the window's count has
    reached the limit (as of the statement's snapshot) the call is refused without touching the row: a flood
    above the limit reads the counter instead of queueing on its lock. The counter can therefore overshoot the
    limit only by calls that raced past that check; admitted calls = ``min(count, limit)``.
    """
    return f"""
WITH k AS (
    SELECT {_key_columns()}
    FROM api_keys k JOIN organizations o ON o.id = k.organization_id
    WHERE k.key_hash = {param}
), seen AS (
    SELECT coalesce((SELECT r.count FROM rate_limit_tracking r, k
                     WHERE r.bucket = k.bucket AND r.window_start = k.window_start), 0) AS count
), hit AS (
    INSERT INTO rate_limit_tracking AS r (bucket, window_start, organization_id, count)
    SELECT bucket, window_start, organization_id, 1 FROM k, seen WHERE k.status = 'ok' AND seen.count < k.lim
    ON CONFLICT (bucket, window_start) DO UPDATE SET count = r.count + 1
    RETURNING r.count
)
SELECT k.id::text, k.organization_id::text, k.slug, k.plan, k.environment, k.status, k.lim,
       CASE WHEN k.status <> 'ok' THEN seen.count
            ELSE coalesce((SELECT count FROM hit), seen.count + 1)
       END AS used,
       extract(epoch FROM k.window_start + {WINDOW} - statement_timestamp())::float8 AS reset_in,
       statement_timestamp() AS at
FROM k, seen
"""  # noqa: S608 - only our own constants and the plan table are interpolated


PREPARE_SQL = f"PREPARE {STATEMENT_NAME} (bytea) AS {verify_statement()}"
EXECUTE_SQL = f"EXECUTE {STATEMENT_NAME} (%s)"


def verify_group_statement(param: str = "$1") -> str:
    """The verification of several calls at once, for the array of key hashes in ``param``.

    One row per call whose key exists, led by the call's position in the array (1-based); the other columns
    are those of :func:`verify_statement`. Each organization's counter is incremented once, by the number of
    the group's calls with a usable key for it (unless the window's count had already reached the limit as of
    the statement's snapshot: then its calls are refused without touching the row, as one at a time). Each
    call's count is the counter before the group's increment plus its rank among the group's calls for that
    organization, so the counts of an organization's calls are still distinct and consecutive, a call is
    admitted iff its count is ``<= limit``, and exactly ``min(limit, calls)`` calls are admitted per window.
    Counter rows are locked in ``bucket`` order, so two groups sharing organizations cannot deadlock.
    """
    return f"""
WITH k AS (
    SELECT i.ord, {_key_columns()}
    FROM unnest({param}::bytea[]) WITH ORDINALITY AS i(key_hash, ord)
    JOIN api_keys k ON k.key_hash = i.key_hash
    JOIN organizations o ON o.id = k.organization_id
), seen AS (
    SELECT b.bucket, coalesce(r.count, 0) AS count
    FROM (SELECT DISTINCT bucket, window_start FROM k) b
    LEFT JOIN rate_limit_tracking r ON r.bucket = b.bucket AND r.window_start = b.window_start
), asking AS (
    SELECT k.ord, k.bucket, k.window_start, k.organization_id,
           row_number() OVER (PARTITION BY k.bucket ORDER BY k.ord) AS rank,
           count(*) OVER (PARTITION BY k.bucket) AS n
    FROM k JOIN seen ON seen.bucket = k.bucket
    WHERE k.status = 'ok' AND seen.count < k.lim
), hit AS (
    INSERT INTO rate_limit_tracking AS r (bucket, window_start, organization_id, count)
    SELECT DISTINCT ON (bucket) bucket, window_start, organization_id, n FROM asking ORDER BY bucket
    ON CONFLICT (bucket, window_start) DO UPDATE SET count = r.count + excluded.count
    RETURNING r.bucket, r.count
)
SELECT k.ord, k.id::text, k.organization_id::text, k.slug, k.plan, k.environment, k.status, k.lim,
       CASE WHEN k.status <> 'ok' THEN seen.count
            WHEN a.ord IS NULL THEN seen.count + 1
            ELSE coalesce(h.count - a.n, seen.count) + a.rank
       END AS used,
       extract(epoch FROM k.window_start + {WINDOW} - statement_timestamp())::float8 AS reset_in,
       statement_timestamp() AS at
FROM k JOIN seen ON seen.bucket = k.bucket
LEFT JOIN asking a ON a.ord = k.ord
LEFT JOIN hit h ON h.bucket = k.bucket
"""  # noqa: S608 - only our own constants and the plan table are interpolated


GROUP_STATEMENT_NAME = "portal_verify_group_v1"
PREPARE_GROUP_SQL = f"PREPARE {GROUP_STATEMENT_NAME} (bytea[]) AS {verify_group_statement()}"
EXECUTE_GROUP_SQL = f"EXECUTE {GROUP_STATEMENT_NAME} (%s)"

# Usage rows are written in batches: one INSERT per flush, each column an array literal (a statement-level
# trigger runs once per batch), then ``last_used_at`` for the keys in the batch, only where it is more than a
# minute old.
INSERT_USAGE = (
    "INSERT INTO api_key_usage (key_id, organization_id, occurred_at, endpoint, status_code, latency_ms, outcome) "
    "SELECT * FROM unnest(%s::uuid[], %s::uuid[], %s::timestamptz[], %s::text[], %s::int[], %s::float8[], "
    "%s::text[])"
)
TOUCH_KEYS_PREFIX = "UPDATE api_keys k SET last_used_at = v.t FROM (VALUES "
TOUCH_KEYS_SUFFIX = (
    ") AS v(id, t) WHERE k.id = v.id AND (k.last_used_at IS NULL OR k.last_used_at < v.t - interval '1 minute')"
)

# Windows of the API limiter end a minute after they start; keep one spare window for clock skew.
PRUNE_API_WINDOWS_SQL = (
    f"DELETE FROM rate_limit_tracking WHERE bucket LIKE '{BUCKET_PREFIX}%' "  # noqa: S608
    f"AND window_start < statement_timestamp() - interval '{2 * WINDOW_SECONDS} seconds'"
)

# The tables every verification churns: pending sums are appended and deleted (one row per key per flush), and
# finished limiter windows are deleted. Vacuumed here as well as by autovacuum, which may be off or a minute
# behind: unvacuumed, the pending table grows without bound and every fold scans all of it.
HOT_TABLES = ("usage_rollup_pending", "rate_limit_tracking")
VACUUM_HOT_TABLES_SQL = f"VACUUM (SKIP_LOCKED, TRUNCATE false) {', '.join(HOT_TABLES)}"
VACUUM_LOCK = 7_201_005  # advisory lock id: one worker's usage writer vacuums at a time
TRY_VACUUM_LOCK_SQL = f"SELECT pg_try_advisory_lock({VACUUM_LOCK})"
VACUUM_UNLOCK_SQL = f"SELECT pg_advisory_unlock({VACUUM_LOCK})"
