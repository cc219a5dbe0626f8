"""Who uses a key, from where: its last call and its recent clients, for the key page and before a revoke or roll.

Clients come from the client rollups (migration 0012), never from raw events: the last 24 hours from
``usage_key_clients_hourly`` (exact to the hour), 7 and 30 days from ``usage_key_clients_daily`` (whole UTC
days, so a busy key's month reads at most one row per client and day). The last call is the key's newest raw
event: one row through the ``(key_id, occurred_at)`` index, in the partitions from the key's newest hour on.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any

import sqlalchemy as sa

from portal.db import Reader, read
from portal.extensions import db
from portal.usage import partitions
from portal.usage.maintenance import fold, fold_clients
from portal.usage.ranges import floor_hour

# The windows the key page offers, by query value; 24 hours are counted by the hour, longer ones by the day.
WINDOWS: dict[str, tuple[str, timedelta]] = {
    "24h": ("Last 24 hours", timedelta(hours=24)),
    "7d": ("Last 7 days", timedelta(days=7)),
    "30d": ("Last 30 days", timedelta(days=30)),
}
DEFAULT_WINDOW = "7d"
MAX_CLIENTS = 50  # rows a page lists; the rest are counted


@dataclass(frozen=True, slots=True)
class LastUse:
    at: datetime
    client_ip: str | None
    user_agent: str | None
    endpoint: str | None
    outcome: str
    status_code: int


@dataclass(frozen=True, slots=True)
class Client:
    client_ip: str | None
    user_agent: str
    calls: int
    first_seen: datetime
    last_seen: datetime


@dataclass(frozen=True, slots=True)
class Clients:
    """A key's distinct clients over a window, most recently seen first; ``total`` counts those not listed too."""

    window: str
    label: str
    since: datetime
    counted_from: datetime  # the calls counted start here: the window's first whole hour or UTC day
    rows: list[Client]
    total: int
    calls: int

    @property
    def hidden(self) -> int:
        return self.total - len(self.rows)


LAST_USE_SQL = sa.text(
    "SELECT occurred_at, host(client_ip) AS client_ip, user_agent, endpoint, outcome, status_code"
    " FROM api_key_usage WHERE key_id = :key AND organization_id = :org AND occurred_at >= :since"
    " ORDER BY occurred_at DESC, id DESC LIMIT 1"
)

# Rows from the window's first hour (or day); a client whose calls in that edge period all predate the window
# is left out by its last call.
_CLIENTS_SQL = """
WITH seen AS (
    SELECT client_ip, user_agent, sum(calls)::bigint AS calls, min(first_seen) AS first_seen,
           max(last_seen) AS last_seen
    FROM {table}
    WHERE key_id = :key AND organization_id = :org AND {period} >= :start
    GROUP BY client_ip, user_agent
    HAVING max(last_seen) >= :since
)
SELECT client_ip, user_agent, calls, first_seen, last_seen,
       count(*) OVER () AS total, sum(calls) OVER ()::bigint AS all_calls
FROM seen ORDER BY last_seen DESC, calls DESC LIMIT :limit
"""
HOURLY_CLIENTS_SQL = sa.text(_CLIENTS_SQL.format(table="usage_key_clients_hourly", period="bucket"))
DAILY_CLIENTS_SQL = sa.text(_CLIENTS_SQL.format(table="usage_key_clients_daily", period="day"))


def last_use(organization_id: uuid.UUID, key_id: uuid.UUID, reader: Reader = read) -> LastUse | None:
    """The key's newest call, however it was answered: when, from which address and client, to which endpoint."""
    since = partitions.key_events_since(key_id, 1, reader)
    row = reader(LAST_USE_SQL, {"key": key_id, "org": organization_id, "since": since}).first()
    return LastUse(*row) if row is not None else None


def window_arg(value: str | None) -> str:
    """A window the page offers; anything else is the default."""
    return value if value in WINDOWS else DEFAULT_WINDOW


def recent_clients(
    organization_id: uuid.UUID,
    key_id: uuid.UUID,
    window: str,
    now: datetime,
    limit: int = MAX_CLIENTS,
    reader: Reader = read,
) -> Clients:
    """The key's distinct (address, user agent) pairs with calls in ``window`` (a :data:`WINDOWS` name),
    pending sums folded first."""
    fold_clients()
    label, span = WINDOWS[window]
    since = now - span
    hourly = span <= timedelta(hours=24)
    counted_from = floor_hour(since) if hourly else datetime.combine(since.date(), time(), tzinfo=UTC)
    start = counted_from if hourly else counted_from.date()
    params: dict[str, Any] = {"key": key_id, "org": organization_id, "start": start, "since": since, "limit": limit}
    rows = reader(HOURLY_CLIENTS_SQL if hourly else DAILY_CLIENTS_SQL, params).all()
    total = int(rows[0].total) if rows else 0
    calls = int(rows[0].all_calls) if rows else 0
    clients = [Client(r.client_ip or None, r.user_agent, int(r.calls), r.first_seen, r.last_seen) for r in rows]
    return Clients(window, label, since, counted_from, clients, total, calls)


@dataclass(frozen=True, slots=True)
class Impact:
    """What revoking or rolling a key now would break: its last 24 hours of calls and clients."""

    calls: int
    ok: int
    clients: Clients
    last: LastUse | None


LAST_DAY_SQL = sa.text(
    "SELECT coalesce(sum(calls), 0)::bigint AS calls, coalesce(sum(ok), 0)::bigint AS ok FROM usage_key_hourly"
    " WHERE key_id = :key AND organization_id = :org AND bucket >= :from_hour"
)


def impact(organization_id: uuid.UUID, key_id: uuid.UUID, now: datetime) -> Impact:
    """The key's calls in the last 24 hours (whole UTC hours from the first), and who made them.

    Read from the primary, never the read replica, as the rotation watch is: this page comes right before a
    revoke or roll that cannot be undone, and a replica that lags (or has stopped replaying) would show a key
    in use as quiet, "no calls in the last 24 hours", which is when a revoke breaks a client. The primary also
    holds the sums :func:`fold` has just folded, which a replica shows only once it replays them."""
    fold()
    primary = db.session.execute
    clients = recent_clients(organization_id, key_id, "24h", now, reader=primary)
    row = primary(LAST_DAY_SQL, {"key": key_id, "org": organization_id, "from_hour": clients.counted_from}).one()
    return Impact(int(row.calls), int(row.ok), clients, last_use(organization_id, key_id, primary))
