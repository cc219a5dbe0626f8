"""The SQL of one verification, kept in one place so the app, the tests and ``pgbench`` run the same text.

The whole check (key lookup, organization and plan, status at the call's time, the rate-limit upsert) is one
statement with CTEs, prepared once per connection: one round trip, no re-parse or re-plan per call. Calls that
need counters beyond the organization's minute (a key's own limit, a hard monthly quota) are deferred by that
statement to a second one (:func:`_first`, :func:`_verify`). Plan
limits come from :mod:`portal.plans`, the single definition, and are baked into the statement text.
Time is ``statement_timestamp()``: the same as ``now()`` for an autocommit statement, and still the call's own
time when the statement runs inside a longer transaction (as in the test suite).
"""

from __future__ import annotations

from collections.abc import Sequence

from portal.plans import PLANS

WINDOW_SECONDS = 60
# The status the first statement gives a usable call it leaves to the second (:func:`_first`).
DEFERRED = "deferred"
BUCKET_PREFIX = "org:"  # an organization's minute per environment: org:<id>:test and org:<id>:live
KEY_BUCKET_PREFIX = "key:"
QUOTA_BUCKET_PREFIX = "quota:"
WINDOW = f"interval '{WINDOW_SECONDS} seconds'"
WINDOW_START = f"to_timestamp(floor(extract(epoch FROM statement_timestamp()) / {WINDOW_SECONDS}) * {WINDOW_SECONDS})"
MONTH_START = "(date_trunc('month', statement_timestamp() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')"


# Test and live calls have separate minutes, each with the plan's limit: a load test with test keys never
# throttles production.
ORG_BUCKET = f"'{BUCKET_PREFIX}' || k.organization_id::text || ':' || k.environment"


def org_bucket(organization_id: object, environment: str) -> str:
    """The rate-limit bucket of an organization's calls in one environment (what the statements compute)."""
    return f"{BUCKET_PREFIX}{organization_id}:{environment}"


def _limit_case() -> str:
    whens = " ".join(f"WHEN '{p.name}' THEN {int(p.requests_per_minute)}" for p in PLANS.values())
    return f"CASE o.plan {whens} ELSE 0 END"


def _quota_case() -> str:
    """The month's quota where the plan stops calls at it (plus a staff extension for this month), else NULL."""
    whens = " ".join(f"WHEN '{p.name}' THEN {int(p.monthly_quota)}" for p in PLANS.values() if p.hard_quota)
    extension = f"CASE WHEN o.quota_extension_month = ({MONTH_START})::date THEN o.quota_extension ELSE 0 END"
    return f"CASE o.plan {whens} END + {extension}" if whens else "NULL::int"


def _key_columns() -> str:
    """What both statements read per call from its key and organization: status now (the scope and address
    checks are plain expressions, no counters), the organization's limit, the key's own and the month's quota."""
    return f"""CASE WHEN k.revoked_at <= statement_timestamp() THEN 'revoked'
                WHEN k.expires_at <= statement_timestamp() THEN 'expired'
                WHEN cardinality(k.allowed_ips) > 0 AND NOT coalesce(c.ip <<= ANY(k.allowed_ips), false)
                    THEN 'ip_not_allowed'
                WHEN c.scope IS NOT NULL AND cardinality(k.scopes) > 0 AND NOT c.scope = ANY(k.scopes)
                    THEN 'insufficient_scope'
                ELSE 'ok' END AS status,
           {_limit_case()} AS lim, k.rate_limit AS key_lim, {_quota_case()} AS quota_lim"""


def _first(calls: str) -> str:
    """The statement every verification runs first: the organization's minute alone, for the calls that need
    nothing else (columns ``ord``, ``key_hash``, ``scope``, ``ip`` in ``calls``).

    One row per call whose key exists, with the columns of :func:`_verify`; a **deferred** call has the status
    :data:`DEFERRED`. A deferred call is a usable one whose key has its own limit or whose
    organization's plan stops calls at its quota: it needs the buckets of :func:`_verify`, so this statement
    leaves every counter alone for it (its other columns mean nothing) and the backend runs
    :func:`_verify` for the deferred calls alone. Every other call is decided here, exactly as :func:`_verify`
    would: refused by its status (the counter is only read), or counted by the one atomic
    ``INSERT … ON CONFLICT DO UPDATE … RETURNING`` on the organization's row, admitted iff its count (the
    counter before this statement plus its rank among the organization's calls) is ``<= limit``. Once the
    window's count has reached the limit as of the statement's snapshot, its calls are refused without touching
    the row. Deferred calls are counted only by :func:`_verify`'s statement, which increments the same row
    atomically, so admitted = ``min(limit, calls)`` per organization and window across both statements; a
    call is counted by one statement only, so nothing spends a bucket twice.

    This is the old limiter's shape: one lookup, one read of the counter, one upsert (no lock step, window
    over the key and quota buckets, or further writes), so policy that needs no counter (scopes, address
    allowlists, metadata) costs a verification nothing measurable.
    """
    return f"""
WITH c AS ({calls}
), k AS (
    SELECT c.ord, k.id, k.organization_id, k.environment, o.slug, o.plan,
           {_key_columns()},
           {ORG_BUCKET} AS bucket,
           {WINDOW_START} AS window_start, {MONTH_START} AS month_start,
           k.scopes, nullif(k.meta, '{{}}'::jsonb)::text AS meta, k.external_id
    FROM c JOIN api_keys k ON k.key_hash = c.key_hash
    JOIN organizations o ON o.id = k.organization_id
), d AS (
    SELECT k.*, k.status = 'ok' AND (k.key_lim IS NOT NULL OR k.quota_lim IS NOT NULL) AS deferred FROM k
), seen AS (
    SELECT b.bucket, coalesce(r.count, 0) AS count
    FROM (SELECT DISTINCT bucket, window_start FROM d) b
    LEFT JOIN rate_limit_tracking r ON r.bucket = b.bucket AND r.window_start = b.window_start
), asking AS (
    SELECT d.ord, d.bucket, d.window_start, d.organization_id,
           row_number() OVER (PARTITION BY d.bucket ORDER BY d.ord) AS rank,
           count(*) OVER (PARTITION BY d.bucket) AS n
    FROM d JOIN seen ON seen.bucket = d.bucket
    WHERE d.status = 'ok' AND NOT d.deferred AND seen.count < d.lim
), hit AS (
    INSERT INTO rate_limit_tracking AS r (bucket, window_start, organization_id, count)
    SELECT DISTINCT ON (bucket) bucket, window_start, organization_id, n FROM asking ORDER BY bucket
    ON CONFLICT (bucket, window_start) DO UPDATE SET count = r.count + excluded.count
    RETURNING r.bucket, r.count
)
SELECT d.ord, d.id::text, d.organization_id::text, d.slug, d.plan, d.environment,
       CASE WHEN d.deferred THEN '{DEFERRED}'
            WHEN d.status <> 'ok' OR h.count - a.n + a.rank <= d.lim THEN d.status
            ELSE 'rate_limited' END AS status,
       least(d.lim, d.key_lim) AS lim,
       greatest(0, CASE WHEN d.status <> 'ok' THEN d.lim - seen.count
                        WHEN a.ord IS NULL THEN 0
                        ELSE d.lim - (h.count - a.n + a.rank) END) AS remaining,
       extract(epoch FROM d.window_start + {WINDOW} - statement_timestamp())::float8 AS reset_in,
       statement_timestamp() AS at, d.scopes, d.meta, d.external_id,
       extract(epoch FROM d.month_start + interval '1 month' - statement_timestamp())::float8 AS quota_reset_in
FROM d JOIN seen ON seen.bucket = d.bucket
LEFT JOIN asking a ON a.ord = d.ord
LEFT JOIN hit h ON h.bucket = d.bucket
"""  # noqa: S608 - only our own constants and the plan table are interpolated


def _first_one(param: str, scope: str, ip: str) -> str:
    """:func:`_first` for one call, in the shape PostgreSQL runs fastest for one key (no call list, rank or
    window: the counter is read by a scalar subquery and moved by 1); the same decisions and columns, but for
    ``ord``."""
    return f"""
WITH k AS (
    SELECT k.id, k.organization_id, k.environment, o.slug, o.plan,
           {_key_columns()},
           {ORG_BUCKET} AS bucket,
           {WINDOW_START} AS window_start, {MONTH_START} AS month_start,
           k.scopes, nullif(k.meta, '{{}}'::jsonb)::text AS meta, k.external_id
    FROM api_keys k JOIN organizations o ON o.id = k.organization_id,
         (SELECT {scope}::text AS scope, {ip}::inet AS ip) c
    WHERE k.key_hash = {param}::bytea
), d AS (
    SELECT k.*, k.status = 'ok' AND (k.key_lim IS NOT NULL OR k.quota_lim IS NOT NULL) AS deferred FROM k
), seen AS (
    SELECT coalesce((SELECT r.count FROM rate_limit_tracking r, d
                     WHERE r.bucket = d.bucket AND r.window_start = d.window_start), 0) AS count
), hit AS (
    INSERT INTO rate_limit_tracking AS r (bucket, window_start, organization_id, count)
    SELECT bucket, window_start, organization_id, 1 FROM d, seen
    WHERE d.status = 'ok' AND NOT d.deferred AND seen.count < d.lim
    ON CONFLICT (bucket, window_start) DO UPDATE SET count = r.count + 1
    RETURNING r.count
)
SELECT d.id::text, d.organization_id::text, d.slug, d.plan, d.environment,
       CASE WHEN d.deferred THEN '{DEFERRED}'
            WHEN d.status <> 'ok' OR (SELECT count FROM hit) <= d.lim THEN d.status
            ELSE 'rate_limited' END AS status,
       least(d.lim, d.key_lim) AS lim,
       greatest(0, CASE WHEN d.status <> 'ok' THEN d.lim - seen.count
                        ELSE d.lim - coalesce((SELECT count FROM hit), d.lim) END) AS remaining,
       extract(epoch FROM d.window_start + {WINDOW} - statement_timestamp())::float8 AS reset_in,
       statement_timestamp() AS at, d.scopes, d.meta, d.external_id,
       extract(epoch FROM d.month_start + interval '1 month' - statement_timestamp())::float8 AS quota_reset_in
FROM d, seen
"""  # noqa: S608 - only our own constants and the plan table are interpolated


def _verify(calls: str, *, ordered: bool = True) -> str:
    """The verification of the calls in ``calls`` (columns ``ord``, ``key_hash``, ``scope``, ``ip``).

    One row per call whose key exists: its position ``ord`` (only if ``ordered``), key id, organization id,
    slug, plan, environment, status (``ok``, ``revoked``, ``expired``, ``ip_not_allowed``,
    ``insufficient_scope``, ``rate_limited``, ``quota_exceeded``), the per-minute limit that applies to the key
    and what is left of it, seconds until the minute's window resets, the database's time of the call, the
    key's scopes, metadata (as text) and external id, and seconds until the month's quota resets.

    **Buckets.** A usable call needs the organization's minute (``org:<id>``, the plan's limit), the key's
    minute (``key:<id>``, only for a key with its own limit) and the organization's month (``quota:<id>``,
    only on a plan whose quota stops calls). A call is admitted only if every bucket it needs admits it, and a
    call refused by one bucket spends nothing in the others.

    **Exactness.** Counts within a window only grow, so a bucket full as of the statement's snapshot refuses
    its calls exactly, without a lock (a flood above a limit reads instead of queueing). Otherwise:

    1. The key and quota rows of the calls that may pass are locked (``FOR UPDATE``, in bucket order): the
       lock returns each row's latest count, so the key and quota decisions are made on the true counts.
       Within the statement, a key admits its first ``limit - count`` calls; the quota admits, among the
       calls their keys admitted, the organization's first ``quota - count``.
    2. The organization's row is then upserted (``INSERT … ON CONFLICT DO UPDATE … RETURNING``) by the number
       of calls still asking; its row lock serialises concurrent increments, each call gets a distinct count
       (the counter before this statement plus its rank among the organization's calls), and a call is
       admitted iff its count is ``<= limit``. Calls it refuses do not spend key or quota budget; they only
       push the organization's own counter past its limit, where it refuses every later call anyway
       (admitted = ``min(count, limit)``).
    3. The key and quota rows are incremented by the calls admitted: locked rows are updated, rows that did
       not exist are inserted. If another statement created such a row after this one's snapshot, the
       decision in 1 was made on a stale zero: the statement raises ``serialization_failure`` (everything it
       did is undone) and the backend runs it again, now seeing the row. This happens at most once per bucket
       and window, on its first concurrent calls.

    So, per window, admitted = ``min(limit, calls asking)`` for every bucket, across statements, workers and
    servers. Locks are taken in one global order: key and quota rows by bucket, then organization rows by
    bucket, then newly inserted rows by bucket, so concurrent statements cannot deadlock.
    """
    return f"""
WITH c AS ({calls}
), k AS (
    SELECT c.ord, k.id, k.organization_id, k.environment, o.slug, o.plan,
           {_key_columns()},
           {ORG_BUCKET} AS bucket,
           '{KEY_BUCKET_PREFIX}' || k.id::text AS key_bucket,
           '{QUOTA_BUCKET_PREFIX}' || k.organization_id::text AS quota_bucket,
           {WINDOW_START} AS window_start, {MONTH_START} AS month_start,
           k.scopes, nullif(k.meta, '{{}}'::jsonb)::text AS meta, k.external_id
    FROM c JOIN api_keys k ON k.key_hash = c.key_hash
    JOIN organizations o ON o.id = k.organization_id
), seen AS (
    SELECT b.bucket, b.window_start, r.count
    FROM (SELECT bucket, window_start FROM k
          UNION SELECT key_bucket, window_start FROM k WHERE status = 'ok' AND key_lim IS NOT NULL
          UNION SELECT quota_bucket, month_start FROM k WHERE status = 'ok' AND quota_lim IS NOT NULL) b
    LEFT JOIN rate_limit_tracking r ON r.bucket = b.bucket AND r.window_start = b.window_start
), s AS (
    SELECT k.*, coalesce(so.count, 0) AS org_seen, coalesce(sk.count, 0) AS key_seen,
           sk.count IS NOT NULL AS key_present, coalesce(sq.count, 0) AS quota_seen,
           sq.count IS NOT NULL AS quota_present,
           k.status = 'ok' AND coalesce(so.count, 0) < k.lim
               AND (k.key_lim IS NULL OR coalesce(sk.count, 0) < k.key_lim)
               AND (k.quota_lim IS NULL OR coalesce(sq.count, 0) < k.quota_lim) AS may
    FROM k
    JOIN seen so ON so.bucket = k.bucket AND so.window_start = k.window_start
    LEFT JOIN seen sk ON k.key_lim IS NOT NULL AND sk.bucket = k.key_bucket AND sk.window_start = k.window_start
    LEFT JOIN seen sq ON k.quota_lim IS NOT NULL AND sq.bucket = k.quota_bucket
                     AND sq.window_start = k.month_start
), locked AS (
    SELECT r.bucket, r.window_start, r.count FROM rate_limit_tracking r
    WHERE (r.bucket, r.window_start) IN (
        SELECT key_bucket, window_start FROM s WHERE may AND key_present
        UNION SELECT quota_bucket, month_start FROM s WHERE may AND quota_present)
    ORDER BY r.bucket FOR UPDATE OF r
), by_key AS (
    SELECT s.*, coalesce(lk.count, 0) AS key_now, coalesce(lq.count, 0) AS quota_now,
           s.key_lim IS NULL OR coalesce(lk.count, 0) + count(*) FILTER (WHERE s.may) OVER (
               PARTITION BY s.key_bucket ORDER BY s.ord) <= s.key_lim AS key_ok
    FROM s
    LEFT JOIN locked lk ON lk.bucket = s.key_bucket AND lk.window_start = s.window_start
    LEFT JOIN locked lq ON lq.bucket = s.quota_bucket AND lq.window_start = s.month_start
), by_quota AS (
    SELECT b.*,
           b.quota_lim IS NULL OR b.quota_now + count(*) FILTER (WHERE b.may AND b.key_ok) OVER (
               PARTITION BY b.bucket ORDER BY b.ord) <= b.quota_lim AS quota_ok
    FROM by_key b
), asking AS (
    SELECT q.ord, q.bucket, q.window_start, q.organization_id,
           row_number() OVER (PARTITION BY q.bucket ORDER BY q.ord) AS rank,
           count(*) OVER (PARTITION BY q.bucket) AS n
    FROM by_quota q WHERE q.may AND q.key_ok AND q.quota_ok
), hit AS (
    INSERT INTO rate_limit_tracking AS r (bucket, window_start, organization_id, count)
    SELECT DISTINCT ON (bucket) bucket, window_start, organization_id, n FROM asking ORDER BY bucket
    ON CONFLICT (bucket, window_start) DO UPDATE SET count = r.count + excluded.count
    RETURNING r.bucket, r.count
), decided AS (
    SELECT q.*, a.ord IS NOT NULL AND h.count - a.n + a.rank <= q.lim AS admitted,
           coalesce(h.count - a.n + a.rank, q.org_seen + 1) AS org_used
    FROM by_quota q
    LEFT JOIN asking a ON a.ord = q.ord
    LEFT JOIN hit h ON h.bucket = q.bucket
), spent AS (
    SELECT key_bucket AS bucket, window_start, organization_id, count(*)::int AS n, bool_or(key_present) AS present
    FROM decided WHERE admitted AND key_lim IS NOT NULL GROUP BY 1, 2, 3
    UNION ALL
    SELECT quota_bucket, month_start, organization_id, count(*)::int, bool_or(quota_present)
    FROM decided WHERE admitted AND quota_lim IS NOT NULL GROUP BY 1, 2, 3
), bumped AS (
    UPDATE rate_limit_tracking r SET count = r.count + sp.n
    FROM spent sp WHERE sp.present AND r.bucket = sp.bucket AND r.window_start = sp.window_start
    RETURNING r.bucket
), opened AS (
    INSERT INTO rate_limit_tracking (bucket, window_start, organization_id, count)
    SELECT bucket, window_start, organization_id, n FROM spent WHERE NOT present ORDER BY bucket
    ON CONFLICT (bucket, window_start) DO NOTHING
    RETURNING bucket
), raced AS (
    SELECT CASE WHEN (SELECT count(*) FROM opened) + (SELECT count(*) FROM bumped)
                     < (SELECT count(*) FROM spent) THEN portal_limiter_race() END AS failed
)
SELECT {"d.ord, " if ordered else ""}d.id::text, d.organization_id::text, d.slug, d.plan, d.environment,
       CASE WHEN d.status <> 'ok' OR d.admitted THEN d.status
            WHEN d.quota_lim IS NOT NULL AND (d.quota_seen >= d.quota_lim OR (d.may AND d.key_ok AND NOT d.quota_ok))
                THEN 'quota_exceeded'
            ELSE 'rate_limited' END AS status,
       least(d.lim, d.key_lim) AS lim,
       greatest(0, CASE WHEN d.status <> 'ok' THEN d.lim - d.org_seen
                        WHEN NOT d.admitted THEN 0
                        ELSE least(d.lim - d.org_used,
                                   d.key_lim - d.key_now - count(*) FILTER (WHERE d.admitted) OVER (
                                       PARTITION BY d.key_bucket ORDER BY d.ord)) END) AS remaining,
       extract(epoch FROM d.window_start + {WINDOW} - statement_timestamp())::float8 AS reset_in,
       statement_timestamp() AS at, d.scopes, d.meta, d.external_id,
       extract(epoch FROM d.month_start + interval '1 month' - statement_timestamp())::float8 AS quota_reset_in
FROM decided d, raced
WHERE raced.failed IS NULL
"""  # noqa: S608 - only our own constants and the plan table are interpolated


def _one(param: str, scope: str, ip: str) -> str:
    return f"SELECT 1::bigint AS ord, {param}::bytea AS key_hash, {scope}::text AS scope, {ip}::inet AS ip"


def _many(param: str, scopes: str, ips: str) -> str:
    calls = f"unnest({param}::bytea[], {scopes}::text[], {ips}::inet[]) WITH ORDINALITY AS i(key_hash, scope, ip, ord)"
    return f"SELECT i.ord, i.key_hash, i.scope, i.ip FROM {calls}"  # noqa: S608 - our own parameter names


def verify_statement(param: str = "$1", scope: str = "$2", ip: str = "$3") -> str:
    """The verification of one call: key hash ``param``, the scope it asks for, the client's address.

    The statement every call runs first (:func:`_first`); a deferred call then runs
    :func:`verify_counters_statement`. The same statements as the grouped ones for one call, so both decide
    alike; no row means no such key.
    """
    return _first_one(param, scope, ip)


def verify_group_statement(param: str = "$1", scopes: str = "$2", ips: str = "$3") -> str:
    """The verification of several calls at once: arrays of key hashes, asked scopes and client addresses.

    One row per call whose key exists, led by the call's position in the arrays (1-based); the rest is
    :func:`_first`, then :func:`verify_counters_group_statement` for the deferred calls alone. Each bucket is
    touched once per statement (the organization's counter moves by the group's calls asking it), and every
    call still gets its own count, so admission is as exact as one call at a time.
    """
    return _first(_many(param, scopes, ips))


def verify_counters_statement(param: str = "$1", scope: str = "$2", ip: str = "$3") -> str:
    """:func:`_verify` for one deferred call (its key has its own limit, or its plan a hard quota), without
    ``ord`` like :func:`verify_statement`."""
    return _verify(_one(param, scope, ip), ordered=False)


def verify_counters_group_statement(param: str = "$1", scopes: str = "$2", ips: str = "$3") -> str:
    """:func:`_verify` for a group's deferred calls, led by each call's position in these arrays."""
    return _verify(_many(param, scopes, ips))


STATEMENT_NAME = "portal_verify_v4"
GROUP_STATEMENT_NAME = "portal_verify_group_v4"
COUNTERS_STATEMENT_NAME = "portal_verify_counters_v4"
COUNTERS_GROUP_STATEMENT_NAME = "portal_verify_counters_group_v4"
ONE, MANY = "(bytea, text, inet)", "(bytea[], text[], inet[])"
PREPARE_SQL = f"PREPARE {STATEMENT_NAME} {ONE} AS {verify_statement()}"
PREPARE_GROUP_SQL = f"PREPARE {GROUP_STATEMENT_NAME} {MANY} AS {verify_group_statement()}"
PREPARE_COUNTERS_SQL = f"PREPARE {COUNTERS_STATEMENT_NAME} {ONE} AS {verify_counters_statement()}"
PREPARE_COUNTERS_GROUP_SQL = f"PREPARE {COUNTERS_GROUP_STATEMENT_NAME} {MANY} AS {verify_counters_group_statement()}"
# The session setting the literals below are written for (PostgreSQL's default): only ``'`` is special in them.
SESSION_SETTINGS_SQL = "SET standard_conforming_strings = on"


def _literal(value: str | None) -> str:
    if value is None:
        return "NULL"
    if "\x00" in value:
        raise ValueError("A string literal cannot contain NUL (0x00) characters.")
    return "'" + value.replace("'", "''") + "'"


def _bytea(value: bytes) -> str:
    return "'\\x" + value.hex() + "'::bytea"


# The EXECUTE of a prepared statement, its arguments written out as psycopg2 would write them (the same text
# reaches PostgreSQL) in a third of the instructions psycopg2's adaptation takes (docs/performance.md).


def execute_sql(name: str, key_hash: bytes, scope: str | None, ip: str | None) -> str:
    """``EXECUTE`` of a single-call statement (:data:`STATEMENT_NAME`, :data:`COUNTERS_STATEMENT_NAME`)."""
    return f"EXECUTE {name} ({_bytea(key_hash)}, {_literal(scope)}, {_literal(ip)}::inet)"


def execute_group_sql(
    name: str, key_hashes: Sequence[bytes], scopes: Sequence[str | None], ips: Sequence[str | None]
) -> str:
    """``EXECUTE`` of a grouped statement, its arguments as arrays in call order."""
    return (
        f"EXECUTE {name} (ARRAY[{','.join(map(_bytea, key_hashes))}], "
        f"ARRAY[{','.join(map(_literal, scopes))}]::text[], ARRAY[{','.join(map(_literal, ips))}]::inet[])"
    )


# Usage rows are written in batches: one INSERT per flush, each column an array literal (a statement-level
# trigger runs once per batch), then ``last_used_at`` for the keys in the batch, only where it is more than a
# minute old.
INSERT_USAGE = (
    "INSERT INTO api_key_usage (key_id, organization_id, occurred_at, endpoint, status_code, latency_ms, outcome, "
    "client_ip, user_agent) "
    "SELECT * FROM unnest(%s::uuid[], %s::uuid[], %s::timestamptz[], %s::text[], %s::int[], %s::float8[], "
    "%s::text[], %s::inet[], %s::text[])"
)
# The usage table has a partition per UTC day (migration 0022, portal/usage/partitions.py). Each writer makes
# sure the next days' exist, and a batch that finds no partition for its rows (SQLSTATE 23514 without a
# constraint name) makes them and is written again. The function skips what exists and serializes creators.
ENSURE_PARTITIONS_SQL = "SELECT usage_partitions_ensure(%s, %s)"
PARTITION_LOCK_TIMEOUT_SQL = "SET LOCAL lock_timeout = '5s'"  # a long reader of the table delays, never stalls, it
NO_PARTITION_PGCODE = "23514"

# Calls with a malformed or unknown key (and those refused for too many of them) are counted, not stored one
# row each: one upsert per flush of the counts a worker gathered, summed per minute, client address and
# outcome. Rows are taken in one order (minute, address, outcome) so concurrent flushes of several workers
# cannot deadlock on each other's rows.
UPSERT_INVALID_KEY_COUNTS = (
    "INSERT INTO api_invalid_key_counts AS c (minute, client_ip, outcome, calls) "
    "SELECT minute, client_ip, outcome, sum(calls) "
    "FROM unnest(%s::timestamptz[], %s::inet[], %s::text[], %s::bigint[]) AS v(minute, client_ip, outcome, calls) "
    "GROUP BY 1, 2, 3 ORDER BY 1, 2, 3 "
    "ON CONFLICT (minute, client_ip, outcome) DO UPDATE SET calls = c.calls + excluded.calls"
)
TOUCH_KEYS_PREFIX = "UPDATE api_keys k SET last_used_at = v.t FROM (VALUES "
TOUCH_KEYS_SUFFIX = (
    ") AS v(id, t) WHERE k.id = v.id AND (k.last_used_at IS NULL OR k.last_used_at < v.t - interval '1 minute')"
)

# Windows of the API limiter end a minute after they start; keep one spare window for clock skew. Quota
# months are kept for two months (the usage pages read the rollups, not these counters).
PRUNE_API_WINDOWS_SQL = (
    f"DELETE FROM rate_limit_tracking WHERE ((bucket LIKE '{BUCKET_PREFIX}%' OR bucket LIKE '{KEY_BUCKET_PREFIX}%') "  # noqa: S608
    f"AND window_start < statement_timestamp() - interval '{2 * WINDOW_SECONDS} seconds') "
    f"OR (bucket LIKE '{QUOTA_BUCKET_PREFIX}%' AND window_start < statement_timestamp() - interval '2 months')"
)

# The tables every verification churns: pending sums are appended and deleted (one row per key per flush), and
# finished limiter windows are deleted. Vacuumed here as well as by autovacuum, which may be off or a minute
# behind: unvacuumed, the pending table grows without bound and every fold scans all of it.
HOT_TABLES = ("usage_rollup_pending", "usage_client_pending", "rate_limit_tracking")
VACUUM_HOT_TABLES_SQL = f"VACUUM (SKIP_LOCKED, TRUNCATE false) {', '.join(HOT_TABLES)}"
VACUUM_LOCK = 7_201_005  # advisory lock id: one worker's usage writer vacuums at a time
TRY_VACUUM_LOCK_SQL = f"SELECT pg_try_advisory_lock({VACUUM_LOCK})"
VACUUM_UNLOCK_SQL = f"SELECT pg_advisory_unlock({VACUUM_LOCK})"
