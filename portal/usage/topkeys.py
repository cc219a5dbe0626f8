"""Top keys for a range, exactly, without summing every key's hourly rows.

Whole UTC days come from the daily rollup and the partial days at the edges from the hourly one. To keep the
edges cheap, the daily rollup first ranks keys over the whole days the range touches (an upper bound for each
key); only the leading candidates get their exact edge hours, read by primary key. If the last key shown beats
the bound of every key left out, the answer is exact; otherwise (flat traffic) one full query answers instead.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from portal.extensions import db
from portal.usage.ranges import UsageRange

CANDIDATES = 50

_EXACT = """
WITH parts AS (
    SELECT key_id, calls, ok, rate_limited FROM usage_key_daily
    WHERE organization_id = :org AND day >= :d0 AND day < :d1 {daily_keys}
    UNION ALL
    SELECT key_id, calls, ok, rate_limited FROM usage_key_hourly
    WHERE organization_id = :org {hourly_keys}
      AND ((bucket >= :start AND bucket < :h0) OR (bucket >= :h1 AND bucket < :end))
), ranked AS (
    SELECT key_id, sum(calls) AS calls, sum(ok) AS ok, sum(rate_limited) AS rate_limited
    FROM parts GROUP BY key_id ORDER BY sum(calls) DESC, key_id LIMIT :limit
)
SELECT k.id, k.name, k.hint, k.environment, ranked.calls, ranked.ok, ranked.rate_limited
FROM ranked JOIN api_keys k ON k.id = ranked.key_id AND k.organization_id = :org
ORDER BY ranked.calls DESC, k.id
"""
_ALL_KEYS = sa.text(_EXACT.format(daily_keys="", hourly_keys=""))
_SOME_KEYS = sa.text(_EXACT.format(daily_keys="AND key_id = ANY(CAST(:ids AS uuid[]))",
                                   hourly_keys="AND key_id = ANY(CAST(:ids AS uuid[]))"))
_BOUNDS = sa.text(
    "SELECT key_id, sum(calls) AS calls FROM usage_key_daily"
    " WHERE organization_id = :org AND day >= :first AND day <= :last"
    " GROUP BY key_id ORDER BY sum(calls) DESC, key_id LIMIT :limit"
)


def split_days(r: UsageRange) -> tuple[date, date, datetime, datetime]:
    """Whole UTC days inside the range (``[d0, d1)``), and where the partial edge hours stop and resume."""
    first_midnight = r.start.replace(hour=0)
    if first_midnight < r.start:
        first_midnight += timedelta(days=1)
    last_midnight = r.end.replace(hour=0)
    if last_midnight <= first_midnight:
        return date.min, date.min, r.end, r.end
    return first_midnight.date(), last_midnight.date(), first_midnight, last_midnight


def top_keys(organization_id: uuid.UUID, r: UsageRange, limit: int = 10) -> list[Any]:
    d0, d1, h0, h1 = split_days(r)
    params = {"org": organization_id, "d0": d0, "d1": d1, "h0": h0, "h1": h1, "start": r.start, "end": r.end,
              "limit": limit}
    bounds = list(db.session.execute(_BOUNDS, {
        "org": organization_id, "first": r.start.date(), "last": (r.end - timedelta(microseconds=1)).date(),
        "limit": CANDIDATES + 1,
    }))
    if len(bounds) > CANDIDATES:
        ceiling = bounds[CANDIDATES].calls  # no key left out can have more calls than this
        ids = [str(row.key_id) for row in bounds[:CANDIDATES]]
        ranked = list(db.session.execute(_SOME_KEYS, {**params, "ids": ids}))
        if len(ranked) == limit and ranked[-1].calls > ceiling:
            return ranked
        return list(db.session.execute(_ALL_KEYS, params))
    return list(db.session.execute(_SOME_KEYS, {**params, "ids": [str(row.key_id) for row in bounds]}))
