"""Retention and repair: drop old raw events (whole daily partitions) and invalid-key counts (rollups stay), and
rebuild rollups from the raw events left."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from portal.extensions import db
from portal.timeutil import utcnow
from portal.usage import partitions
from portal.verification.outcomes import OUTCOMES

_COUNTS = ", ".join(["calls", *OUTCOMES, "latency_ms_sum"])
_AGGREGATES = ", ".join(
    [
        "count(*)",
        *(f"count(*) FILTER (WHERE outcome = '{o}')" for o in OUTCOMES),
        "coalesce(sum(latency_ms), 0)",
    ]
)
ROLLUP_TABLES = {  # table -> its time column
    "usage_org_hourly": "bucket",
    "usage_key_hourly": "bucket",
    "usage_key_daily": "day",
    "usage_endpoint_hourly": "bucket",
    "usage_key_endpoint_daily": "day",
    "usage_key_clients_hourly": "bucket",
    "usage_key_clients_daily": "day",
}

# The trigger's aggregation (migration 0003), over a range of raw events instead of one statement's rows.
REBUILD_SQL = f"""
INSERT INTO usage_rollup_pending (organization_id, key_id, environment, bucket, endpoint, {_COUNTS})
SELECT n.organization_id, k.id, coalesce(k.environment, 'none'), date_trunc('hour', n.occurred_at, 'UTC'),
       coalesce(n.endpoint, ''), {_AGGREGATES}
FROM api_key_usage n
LEFT JOIN api_keys k ON k.id = n.key_id AND k.organization_id = n.organization_id
WHERE n.organization_id IS NOT NULL AND n.occurred_at >= :since
  AND (CAST(:org AS uuid) IS NULL OR n.organization_id = :org)
GROUP BY 1, 2, 3, 4, 5
"""  # noqa: S608 -- only constants of this module are formatted in

# The client trigger's aggregation (migration 0012), over a range of raw events.
REBUILD_CLIENTS_SQL = """
INSERT INTO usage_client_pending (organization_id, key_id, bucket, client_ip, user_agent, calls, first_seen, last_seen)
SELECT n.organization_id, n.key_id, date_trunc('hour', n.occurred_at, 'UTC'), coalesce(host(n.client_ip), ''),
       coalesce(n.user_agent, ''), count(*), min(n.occurred_at), max(n.occurred_at)
FROM api_key_usage n
WHERE n.key_id IS NOT NULL AND n.organization_id IS NOT NULL AND n.occurred_at >= :since
  AND (CAST(:org AS uuid) IS NULL OR n.organization_id = :org)
GROUP BY 1, 2, 3, 4, 5
"""

# The raw events, one row each with the dimensions the rollups use (for the equality check).
_SRC = """
WITH src AS MATERIALIZED (
    SELECT n.organization_id, k.id AS key_id, k.organization_id AS key_org,
           coalesce(k.environment, 'none') AS environment,
           date_trunc('hour', n.occurred_at, 'UTC') AS hour, (n.occurred_at AT TIME ZONE 'UTC')::date AS day,
           coalesce(n.endpoint, '') AS endpoint, n.outcome
    FROM api_key_usage n LEFT JOIN api_keys k ON k.id = n.key_id AND k.organization_id = n.organization_id
    WHERE n.organization_id = :org AND n.occurred_at >= :since
)"""


FOLD_LANES = 8  # as migration 0023: organizations fall into this many lanes, each folded on its own


def lanes_of(job: int, jobs: int) -> list[int]:
    """The fold lanes job ``job`` of ``jobs`` folds: a share each, so their folds run side by side (one job: all)."""
    groups = min(jobs, FOLD_LANES)
    return [lane for lane in range(FOLD_LANES) if lane % groups == job % groups]


def fold() -> int:
    """Move pending sums into the rollup tables now (every lane, waiting for folders of the same lanes); returns
    how many were moved.

    The client rollups have their own :func:`fold_clients`, run where they are read, so the charts' pages do
    not pay for them."""
    moved = int(db.session.scalar(sa.text("SELECT usage_rollup_fold()")) or 0)
    db.session.commit()
    return moved


def fold_clients() -> int:
    """Move pending client sums into ``usage_key_clients`` (its own lane locks), so a page reads them all."""
    moved = int(db.session.scalar(sa.text("SELECT usage_clients_fold()")) or 0)
    db.session.commit()
    return moved


def parse_age(text: str) -> timedelta:
    """``90d``, ``36h``, ``2w`` → a timedelta; anything else is a ValueError with a readable message."""
    match = re.fullmatch(r"\s*(\d{1,5})\s*([hdw])\s*", text or "")
    if not match:
        raise ValueError(f"expected an age like 90d, 36h or 2w, got {text!r}")
    number, unit = int(match.group(1)), match.group(2)
    return {"h": timedelta(hours=number), "d": timedelta(days=number), "w": timedelta(weeks=number)}[unit]


def _rowcount(statement: sa.TextClause, params: dict[str, Any]) -> int:
    result: Any = db.session.execute(statement, params)
    return int(result.rowcount)


def prune_raw(older_than: timedelta, now: datetime | None = None) -> list[partitions.Partition]:
    """Drop the daily partitions of raw events that end before the cutoff (rows of the day the cutoff falls in
    stay until that whole day is past it); rollups stay. Returns the partitions dropped."""
    return partitions.drop_expired(older_than, now)


def prune_invalid_key_counts(older_than: timedelta, now: datetime | None = None) -> int:
    """Delete the per-minute counts of calls with malformed or unknown keys older than the cutoff: they are kept as
    long as raw events (one row per address and minute at most, so one statement does)."""
    count = _rowcount(
        sa.text("DELETE FROM api_invalid_key_counts WHERE minute < :cutoff"), {"cutoff": (now or utcnow()) - older_than}
    )
    db.session.commit()
    return count


def prune_spill_replays(older_than: timedelta, now: datetime | None = None) -> int:
    """Delete the records of spill files replayed before the cutoff, which must be the rollups' retention: a record
    keeps a file still on disk (its removal failed) from being written twice, and its rows would count again in
    rollups that are still kept, however old the raw days they land in."""
    count = _rowcount(
        sa.text("DELETE FROM usage_spill_replays WHERE replayed_at < :cutoff"),
        {"cutoff": (now or utcnow()) - older_than},
    )
    db.session.commit()
    return count


def prune_rollups(older_than: timedelta, now: datetime | None = None) -> int:
    cutoff = (now or utcnow()) - older_than
    deleted = 0
    for table, column in ROLLUP_TABLES.items():
        value = cutoff.date() if column == "day" else cutoff
        deleted += _rowcount(
            sa.text(f"DELETE FROM {table} WHERE {column} < :cutoff"),  # noqa: S608 -- constants only
            {"cutoff": value},
        )
    db.session.commit()
    return deleted


def rebuild_rollups(organization_id: uuid.UUID | None = None, since: datetime | None = None) -> datetime | None:
    """Recompute rollups from ``since`` (a UTC midnight; by default the first whole day of raw events still
    kept, since older rollups outlive their pruned raw rows).

    Inserts into ``api_key_usage`` wait while this runs (SHARE lock), so no call is counted twice or missed.
    Returns the UTC day the rebuild started from, or None when there was nothing to rebuild.
    """
    db.session.execute(sa.text("LOCK TABLE api_key_usage IN SHARE MODE"))
    db.session.execute(sa.text("SELECT usage_rollup_fold()"))  # nothing pending may predate the rebuild
    db.session.execute(sa.text("SELECT usage_clients_fold()"))
    if since is None:
        oldest = db.session.scalar(
            sa.text(
                "SELECT min(occurred_at) FROM api_key_usage WHERE CAST(:org AS uuid) IS NULL OR organization_id = :org"
            ),
            {"org": organization_id},
        )
        if oldest is None:
            db.session.rollback()
            return None
        since = oldest.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        if since < oldest:
            since += timedelta(days=1)
    since = since.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    for table, column in ROLLUP_TABLES.items():
        value = since.date() if column == "day" else since
        db.session.execute(
            sa.text(
                f"DELETE FROM {table} WHERE {column} >= :since"  # noqa: S608
                " AND (CAST(:org AS uuid) IS NULL OR organization_id = :org)"
            ),
            {"since": value, "org": organization_id},
        )
    db.session.execute(sa.text(REBUILD_SQL), {"since": since, "org": organization_id})
    db.session.execute(sa.text(REBUILD_CLIENTS_SQL), {"since": since, "org": organization_id})
    db.session.execute(sa.text("SELECT usage_rollup_fold()"))
    db.session.execute(sa.text("SELECT usage_clients_fold()"))
    db.session.commit()
    return since


_OUTCOME_COLUMNS = ", ".join(["calls", *OUTCOMES])

# Each rollup table as the raw events would give it: (table, key columns, raw aggregation). Counts only;
# latency sums are floats whose last digits depend on the order of addition.
_CHECKS = {
    "usage_org_hourly": (
        f"organization_id, bucket, environment, {_OUTCOME_COLUMNS}",
        "SELECT organization_id, hour, environment, {counts} FROM src GROUP BY 1, 2, 3",
    ),
    "usage_key_hourly": (
        f"key_id, bucket, organization_id, environment, {_OUTCOME_COLUMNS}",
        "SELECT key_id, hour, key_org, environment, {counts} FROM src WHERE key_org IS NOT NULL GROUP BY 1, 2, 3, 4",
    ),
    "usage_key_daily": (
        f"key_id, day, organization_id, environment, {_OUTCOME_COLUMNS}",
        "SELECT key_id, day, key_org, environment, {counts} FROM src WHERE key_org IS NOT NULL GROUP BY 1, 2, 3, 4",
    ),
    "usage_endpoint_hourly": (
        "organization_id, bucket, endpoint, calls, errors",
        "SELECT organization_id, hour, endpoint, count(*),"
        " count(*) FILTER (WHERE outcome <> 'ok') FROM src GROUP BY 1, 2, 3",
    ),
    "usage_key_endpoint_daily": (
        "key_id, day, endpoint, organization_id, calls, errors",
        "SELECT key_id, day, endpoint, key_org, count(*),"
        " count(*) FILTER (WHERE outcome <> 'ok') FROM src WHERE key_org IS NOT NULL"
        " GROUP BY 1, 2, 3, 4",
    ),
}


def rollup_mismatches(organization_id: uuid.UUID, since: datetime | None = None) -> dict[str, int]:
    """Rows that differ between each rollup table and a fresh aggregation of the raw events (empty = equal).

    Slow on purpose (it reads every raw row of the organization): for tests and the benchmark, not pages.
    """
    fold()
    fold_clients()
    since = since or datetime(1970, 1, 1, tzinfo=UTC)
    counts = ", ".join(["count(*)", *(f"count(*) FILTER (WHERE outcome = '{o}')" for o in OUTCOMES)])
    found: dict[str, int] = {}
    for table, (columns, raw) in _CHECKS.items():
        column = ROLLUP_TABLES[table]
        cutoff = since.date() if column == "day" else since
        sql = (
            f"{_SRC}, raw AS ({raw.format(counts=counts)}),"  # noqa: S608 -- constants only
            f" rolled AS (SELECT {columns} FROM {table} WHERE organization_id = :org AND {column} >= :cutoff)"
            " SELECT (SELECT count(*) FROM (SELECT * FROM raw EXCEPT ALL SELECT * FROM rolled) a)"
            " + (SELECT count(*) FROM (SELECT * FROM rolled EXCEPT ALL SELECT * FROM raw) b)"
        )
        differing = db.session.scalar(sa.text(sql), {"org": organization_id, "since": since, "cutoff": cutoff})
        if differing:
            found[table] = int(differing)
    differing = db.session.scalar(sa.text(_CLIENTS_CHECK), {"org": organization_id, "since": since})
    if differing:
        found["usage_key_clients_daily"] = int(differing)
    return found


_CLIENTS_CHECK = """
WITH raw AS (
    SELECT n.key_id, (n.occurred_at AT TIME ZONE 'UTC')::date, coalesce(host(n.client_ip), ''),
           coalesce(n.user_agent, ''), n.organization_id, count(*)::int, min(n.occurred_at), max(n.occurred_at)
    FROM api_key_usage n JOIN api_keys k ON k.id = n.key_id AND k.organization_id = n.organization_id
    WHERE n.organization_id = :org AND n.occurred_at >= :since GROUP BY 1, 2, 3, 4, 5
), rolled AS (
    SELECT key_id, day, client_ip, user_agent, organization_id, calls, first_seen, last_seen
    FROM usage_key_clients_daily WHERE organization_id = :org AND day >= CAST(:since AS date)
)
SELECT (SELECT count(*) FROM (SELECT * FROM raw EXCEPT ALL SELECT * FROM rolled) a)
     + (SELECT count(*) FROM (SELECT * FROM rolled EXCEPT ALL SELECT * FROM raw) b)
"""
