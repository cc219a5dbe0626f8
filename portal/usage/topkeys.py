"""Top keys for a range, exactly, without summing every key's hourly rows.

Whole UTC days come from the daily rollup and the partial days at the edges from the hourly one. To keep the
edges cheap, the daily rollup first ranks keys over the whole days the range touches (an upper bound for each
key); only the leading candidates get their exact edge hours, read by primary key. If the last key shown beats
the bound of every key left out, the answer is exact; otherwise (flat traffic) one full query answers instead.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from portal.db import read
from portal.usage.ranges import UsageRange

CANDIDATES = 50

_EXACT = """
WITH parts AS (
    SELECT key_id, calls, ok, rate_limited FROM usage_key_daily
    WHERE organization_id = :org AND day >= :d0 AND day < :d1
    UNION ALL
    SELECT key_id, calls, ok, rate_limited FROM usage_key_hourly
    WHERE organization_id = :org
      AND ((bucket >= :start AND bucket < :h0) OR (bucket >= :h1 AND bucket < :end))
), ranked AS (
    SELECT key_id, sum(calls) AS calls, sum(ok) AS ok, sum(rate_limited) AS rate_limited
    FROM parts GROUP BY key_id ORDER BY sum(calls) DESC, key_id LIMIT :limit
)
SELECT k.id, k.name, k.hint, k.environment, ranked.calls, ranked.ok, ranked.rate_limited
FROM ranked JOIN api_keys k ON k.id = ranked.key_id AND k.organization_id = :org
ORDER BY ranked.calls DESC, k.id
"""
_ALL_KEYS = sa.text(_EXACT)
# One pass over the daily rollup: each key's calls on the whole days inside the range, and on every day the
# range touches (its upper bound).
_DAILY = sa.text("""
SELECT key_id, sum(calls) AS touched,
       coalesce(sum(calls) FILTER (WHERE day >= :d0 AND day < :d1), 0) AS calls,
       coalesce(sum(ok) FILTER (WHERE day >= :d0 AND day < :d1), 0) AS ok,
       coalesce(sum(rate_limited) FILTER (WHERE day >= :d0 AND day < :d1), 0) AS rate_limited
FROM usage_key_daily WHERE organization_id = :org AND day >= :first AND day <= :last
GROUP BY key_id ORDER BY sum(calls) DESC, key_id LIMIT :limit
""")
_EDGES = sa.text("""
SELECT key_id, sum(calls) AS calls, sum(ok) AS ok, sum(rate_limited) AS rate_limited FROM usage_key_hourly
WHERE key_id = ANY(CAST(:ids AS uuid[]))
  AND ((bucket >= :start AND bucket < :h0) OR (bucket >= :h1 AND bucket < :end))
GROUP BY key_id
""")
_NAMES = sa.text(
    "SELECT id, name, hint, environment FROM api_keys WHERE organization_id = :org AND id = ANY(CAST(:ids AS uuid[]))"
)


@dataclass(frozen=True)
class TopKey:
    id: uuid.UUID
    name: str
    hint: str
    environment: str
    calls: int
    ok: int
    rate_limited: int


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
    params = {
        "org": organization_id,
        "d0": d0,
        "d1": d1,
        "h0": h0,
        "h1": h1,
        "start": r.start,
        "end": r.end,
        "limit": limit,
    }
    daily = list(
        read(
            _DAILY,
            {
                **params,
                "first": r.start.date(),
                "last": (r.end - timedelta(microseconds=1)).date(),
                "limit": CANDIDATES + 1,
            },
        )
    )
    candidates, ceiling = daily[:CANDIDATES], (daily[CANDIDATES].touched if len(daily) > CANDIDATES else 0)
    ids = [str(row.key_id) for row in candidates]
    edges = {row.key_id: row for row in read(_EDGES, {**params, "ids": ids})}
    exact = []
    for row in candidates:
        edge = edges.get(row.key_id)
        calls = int(row.calls) + (int(edge.calls) if edge else 0)
        if calls:
            exact.append(
                (
                    row.key_id,
                    calls,
                    int(row.ok) + (int(edge.ok) if edge else 0),
                    int(row.rate_limited) + (int(edge.rate_limited) if edge else 0),
                )
            )
    exact.sort(key=lambda item: (-item[1], item[0]))
    exact = exact[:limit]
    # Exact when every key was a candidate, or when no key left out could reach the last one shown.
    if len(daily) > CANDIDATES and not (len(exact) == limit and exact[-1][1] > ceiling):
        return list(read(_ALL_KEYS, params))
    names = {row.id: row for row in read(_NAMES, {"org": organization_id, "ids": [str(e[0]) for e in exact]})}
    return [
        TopKey(key_id, names[key_id].name, names[key_id].hint, names[key_id].environment, calls, ok, limited)
        for key_id, calls, ok, limited in exact
        if key_id in names
    ]
