"""Usage numbers for the pages, the CSV exports and the benchmark, read from the rollups (never raw scans).

Only the per-key "recent calls" list reads raw events, one index range at a time. Every read here (and in
``topkeys`` and ``forensics``) goes through ``portal.db.read``, which a streaming replica answers when
``DATABASE_REPLICA_URL`` is set; folding pending sums (``maintenance``) writes, so it stays on the primary.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from portal.db import read, read_scalar
from portal.pagination import Page, paginate
from portal.plans import Plan
from portal.usage import partitions, topkeys
from portal.usage.ranges import UsageRange

# How the chart groups the outcomes: (key, label, outcomes, colour). Malformed and unknown keys are left out:
# no organization can be told from them (their events carry no organization_id), so for an organization or
# one of its keys they would always read 0.
CATEGORIES: tuple[tuple[str, str, tuple[str, ...], str], ...] = (
    ("ok", "OK", ("ok",), "#2b8a3e"),
    ("rate_limited", "Rate-limited", ("rate_limited",), "#e67700"),
    ("quota_exceeded", "Over quota", ("quota_exceeded",), "#862e9c"),
    ("forbidden", "Refused by policy", ("forbidden",), "#495057"),
    ("revoked", "Revoked/expired", ("revoked", "expired"), "#c92a2a"),
)
ENV_SERIES: tuple[tuple[str, str, str], ...] = (
    ("live", "Live", "#a61e4d"),
    ("test", "Test", "#3b5bdb"),
    ("none", "No key", "#868e96"),
)


@dataclass
class Table:
    """Rows exactly as a page shows them; the HTML table and its CSV both render from this."""

    caption: str
    columns: list[str]
    rows: list[list[Any]]
    numeric_from: int = 1
    links: list[str | None] = field(default_factory=list)


@dataclass
class Series:
    starts: list[datetime]
    counts: list[dict[str, float]]
    show_env: bool

    def totals(self) -> dict[str, float]:
        total: dict[str, float] = {}
        for bucket in self.counts:
            for name, value in bucket.items():
                total[name] = total.get(name, 0) + value
        return total

    def env_columns(self) -> list[tuple[str, str, str]]:
        if not self.show_env:
            return []
        totals = self.totals()
        return [e for e in ENV_SERIES if e[0] != "none" or totals.get("env_none")]


def _empty_bucket() -> dict[str, float]:
    return {
        "calls": 0,
        **{c[0]: 0 for c in CATEGORIES},
        "latency_ms_sum": 0,
        **{f"env_{e[0]}": 0 for e in ENV_SERIES},
    }


_SERIES_SQL = """
SELECT {index} AS i, sum(calls) AS calls, sum(ok) AS ok, sum(rate_limited) AS rate_limited,
       sum(quota_exceeded) AS quota_exceeded, sum(forbidden) AS forbidden, sum(revoked + expired) AS revoked,
       sum(latency_ms_sum) AS latency_ms_sum,
       coalesce(sum(calls) FILTER (WHERE environment = 'live'), 0) AS env_live,
       coalesce(sum(calls) FILTER (WHERE environment = 'test'), 0) AS env_test,
       coalesce(sum(calls) FILTER (WHERE environment = 'none'), 0) AS env_none
FROM {table} WHERE {owner} = :owner AND bucket >= :start AND bucket < :end GROUP BY 1
"""
# Which bucket an hourly rollup row falls in, computed by PostgreSQL so only one row per bucket comes back:
# hours by arithmetic, days (local, of uneven length around DST) by searching the sorted bucket starts.
_HOUR_INDEX = "CAST(floor(extract(epoch FROM bucket - CAST(:start AS timestamptz)) / 3600) AS int)"
_DAY_INDEX = "width_bucket(bucket, CAST(:starts AS timestamptz[])) - 1"


def _series(table: str, owner: str, owner_id: uuid.UUID, r: UsageRange, show_env: bool) -> Series:
    starts = r.bucket_starts()
    hourly = r.bucket == "hour"
    sql = _SERIES_SQL.format(index=_HOUR_INDEX if hourly else _DAY_INDEX, table=table, owner=owner)
    params = {"owner": owner_id, "start": r.start, "end": r.end, **({} if hourly else {"starts": starts})}
    rows = read(sa.text(sql), params).mappings()
    series = Series(starts, [_empty_bucket() for _ in starts], show_env=show_env)
    for row in rows:
        if 0 <= row["i"] < len(starts):
            series.counts[row["i"]].update({k: v for k, v in row.items() if k != "i"})
    return series


def org_series(organization_id: uuid.UUID, r: UsageRange) -> Series:
    return _series("usage_org_hourly", "organization_id", organization_id, r, show_env=True)


def key_series(key_id: uuid.UUID, r: UsageRange) -> Series:
    return _series("usage_key_hourly", "key_id", key_id, r, show_env=False)


def series_table(series: Series, r: UsageRange) -> Table:
    envs = series.env_columns()
    columns = [
        f"{'Hour' if r.bucket == 'hour' else 'Day'} starting ({r.tz_name})",
        "Calls",
        *(c[1] for c in CATEGORIES),
        *(e[1] for e in envs),
    ]
    rows = [
        [
            r.bucket_label(start),
            int(b["calls"]),
            *(int(b[c[0]]) for c in CATEGORIES),
            *(int(b[f"env_{e[0]}"]) for e in envs),
        ]
        for start, b in zip(series.starts, series.counts, strict=True)
    ]
    return Table(f"Calls per {r.bucket}, {r.describe()}", columns, rows)


def chart_data(series: Series, r: UsageRange) -> dict[str, Any]:
    """What static/js/usage-charts.js draws: the same numbers as the table."""
    labels = [r.bucket_label(s) for s in series.starts]
    outcome = [{"label": c[1], "color": c[3], "data": [int(b[c[0]]) for b in series.counts]} for c in CATEGORIES]
    env = [
        {"label": e[1], "color": e[2], "data": [int(b[f"env_{e[0]}"]) for b in series.counts]}
        for e in series.env_columns()
    ]
    return {"labels": labels, "outcome": outcome, "environment": env}


def summary(series: Series) -> dict[str, Any]:
    totals = series.totals()
    calls = int(totals.get("calls", 0))
    return {
        "calls": calls,
        **{c[0]: int(totals.get(c[0], 0)) for c in CATEGORIES},
        "error_rate": (calls - totals.get("ok", 0)) / calls if calls else 0.0,
        "avg_latency_ms": totals.get("latency_ms_sum", 0) / calls if calls else None,
    }


def top_keys(organization_id: uuid.UUID, r: UsageRange, limit: int = 10) -> list[Any]:
    """Keys by calls in the range, exact (see ``portal.usage.topkeys``)."""
    return topkeys.top_keys(organization_id, r, limit)


def top_keys_table(rows: list[Any], link: Any) -> Table:
    return Table(
        "Top keys by calls",
        ["Key", "Environment", "Calls", "OK", "Rate-limited"],
        [
            [
                f"{row.name} ({row.hint})",
                row.environment,
                int(row.calls),
                int(row.ok),
                int(row.rate_limited),
            ]
            for row in rows
        ],
        numeric_from=2,
        links=[link(row.id) for row in rows],
    )


def top_endpoints_org(organization_id: uuid.UUID, r: UsageRange, limit: int = 10) -> Table:
    rows = read(
        sa.text(
            "SELECT endpoint, sum(calls) AS calls, sum(errors) AS errors FROM usage_endpoint_hourly"
            " WHERE organization_id = :org AND bucket >= :start AND bucket < :end"
            " GROUP BY endpoint ORDER BY sum(calls) DESC, endpoint LIMIT :limit"
        ),
        {"org": organization_id, "start": r.start, "end": r.end, "limit": limit},
    )
    return _endpoint_table("Top endpoints", rows)


def top_endpoints_key(key_id: uuid.UUID, r: UsageRange, limit: int = 10) -> Table:
    """Per key, endpoints are kept per UTC day, so the range widens to the whole UTC days it touches."""
    first, last = r.start.date(), (r.end - timedelta(microseconds=1)).astimezone(UTC).date()
    rows = read(
        sa.text(
            "SELECT endpoint, sum(calls) AS calls, sum(errors) AS errors FROM usage_key_endpoint_daily"
            " WHERE key_id = :key AND day >= :first AND day <= :last"
            " GROUP BY endpoint ORDER BY sum(calls) DESC, endpoint LIMIT :limit"
        ),
        {"key": key_id, "first": first, "last": last, "limit": limit},
    )
    return _endpoint_table(f"Top endpoints, UTC days {first.isoformat()} – {last.isoformat()}", rows)


def _endpoint_table(caption: str, rows: Any) -> Table:
    return Table(
        caption,
        ["Endpoint", "Calls", "Errors"],
        [[row.endpoint or "(none)", int(row.calls), int(row.errors)] for row in rows],
    )


PACE_WINDOW = timedelta(days=7)
MIN_PACE_WINDOW = timedelta(hours=1)


QUOTA_NEAR_PERCENT = 80.0


@dataclass
class Quota:
    plan: Plan
    used: int
    calls: int
    projected: int
    runs_out_at: datetime | None
    month_end: datetime
    pace_window: timedelta = PACE_WINDOW

    @property
    def percent(self) -> float:
        return min(100.0, 100.0 * self.used / self.plan.monthly_quota) if self.plan.monthly_quota else 0.0

    @property
    def level(self) -> str:
        """How near the quota the month is, for the bar's colour: ``ok``, ``near`` (80% or more) or ``over``."""
        if self.plan.monthly_quota and self.used >= self.plan.monthly_quota:
            return "over"
        return "near" if self.percent >= QUOTA_NEAR_PERCENT else "ok"

    @property
    def pace_label(self) -> str:
        """How the page names the stretch of time the pace is measured over."""
        if self.pace_window >= PACE_WINDOW:
            return "of the last 7 days"
        return "since the organization was created"


def month_quota(organization_id: uuid.UUID, plan: Plan, now: datetime, created_at: datetime | None = None) -> Quota:
    """This UTC month's OK calls against the plan, and when the quota runs out at the recent pace.

    The pace is the OK calls of the last 7 days over 7 days, or, for an organization younger than that, over
    its age (at least an hour): dividing a two-day-old organization's calls by 7 days would hide its pace.
    """
    month_start = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    month_end = (month_start + timedelta(days=32)).replace(day=1)
    window = PACE_WINDOW
    if created_at is not None:
        window = max(MIN_PACE_WINDOW, min(PACE_WINDOW, now - created_at))
    pace_start = now - window
    row = read(
        sa.text(
            "SELECT coalesce(sum(ok) FILTER (WHERE bucket >= :month), 0) AS used,"
            " coalesce(sum(calls) FILTER (WHERE bucket >= :month), 0) AS calls,"
            " coalesce(sum(ok) FILTER (WHERE bucket >= :pace), 0) AS pace"
            " FROM usage_org_hourly WHERE organization_id = :org AND bucket >= least(:month, :pace)"
        ),
        {"org": organization_id, "month": month_start, "pace": pace_start},
    ).one()
    used, paced = int(row.used), int(row.pace)
    window_s, remaining_s = window.total_seconds(), (month_end - now).total_seconds()
    projected = used + int(paced * remaining_s / window_s)
    runs_out_at = None
    if paced > 0 and used < plan.monthly_quota <= projected:
        runs_out_at = now + timedelta(seconds=(plan.monthly_quota - used) * window_s / paced)
    return Quota(plan, used, int(row.calls), projected, runs_out_at, month_end, window)


def has_any_usage(organization_id: uuid.UUID) -> bool:
    return bool(
        read_scalar(
            sa.text("SELECT EXISTS (SELECT 1 FROM usage_org_hourly WHERE organization_id = :org)"),
            {"org": organization_id},
        )
    )


RECENT_CALLS_SQL = sa.text(
    "SELECT occurred_at, endpoint, status_code, outcome, latency_ms, host(client_ip) AS client_ip, user_agent"
    " FROM api_key_usage"
    " WHERE key_id = :key AND organization_id = :org AND occurred_at >= :since ORDER BY occurred_at DESC, id DESC"
    " LIMIT :limit OFFSET :offset"
)
LAST_CALL_SQL = sa.text("SELECT max(occurred_at) FROM api_key_usage WHERE key_id = :key AND occurred_at >= :since")


def recent_calls(organization_id: uuid.UUID, key_id: uuid.UUID, page: int, per_page: int) -> Page[Any]:
    """One page of a key's newest raw events (index on key_id, occurred_at, in the partitions that hold them);
    not counted, as a busy key has millions."""
    params = {"key": key_id, "org": organization_id}

    def fetch(limit: int, offset: int) -> list[Any]:
        since = partitions.key_events_since(key_id, limit + offset)
        return list(read(RECENT_CALLS_SQL, {**params, "since": since, "limit": limit, "offset": offset}).all())

    return paginate(fetch, page=page, per_page=per_page)


def last_call_at(key_id: uuid.UUID) -> datetime | None:
    since = partitions.key_events_since(key_id, 1)
    value: datetime | None = read_scalar(LAST_CALL_SQL, {"key": key_id, "since": since})
    return value
