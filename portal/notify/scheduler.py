"""The scheduled events: keys about to expire, expired or idle, quota thresholds reached, rate-limit refusals.

A pass (:func:`run_once`) asks the database what is due at ``now`` in one set-based query per event type over
every organization, and emits each event with a ``dedupe_key`` naming what it is about:

- ``key.expiring:<key id>:<days>:<expires_at>`` (a changed expiry is a new key, so it warns again),
- ``key.expired:<key id>:<expires_at>``,
- ``key.idle:<key id>:<last use or never>`` (once per idle stretch),
- ``quota.threshold:<YYYY-MM>:<percent>``,
- ``ratelimit.exceeded:<hour>``.

The partial unique index on ``(organization_id, dedupe_key)`` records each at most once, so a pass that runs
twice, late, or at the same moment as another (two workers, two servers, a cron job) announces nothing twice.
The advisory lock only spares a second pass the work. Deleted organizations get nothing.

Run by ``flask notify run`` (cron) and by a thread in each web process (portal/notify/scheduler_thread.py).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from portal import ratelimit
from portal.extensions import db
from portal.models import ApiKey, NotificationEvent, Organization, UsageOrgHourly
from portal.notify.catalogue import EVENTS, EXPIRY_WARNINGS_DAYS, QUOTA_THRESHOLDS
from portal.notify.events import emit, key_data
from portal.timeutil import utcnow
from portal.usage import maintenance

SCHEDULED_EVENTS: tuple[str, ...] = tuple(name for name, event in EVENTS.items() if event.scheduled)

LOCK_ID = 7_201_016  # pg advisory lock id: one pass at a time across processes and servers
# How far back a pass looks, so one that runs late still fires, and a first pass does not announce old news.
EXPIRED_LOOKBACK = timedelta(days=7)
RATELIMIT_LOOKBACK = timedelta(hours=2)
# Only organizations with successful calls this recently can have crossed a quota threshold since a pass.
QUOTA_LOOKBACK = timedelta(days=1)
TURN_BUCKET = "notify:scheduler"  # the fixed-window counter that hands out each interval's pass

_UTC_TEXT = 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'


@dataclass(frozen=True)
class Due:
    """An event a pass found due; ``data`` is completed with the key's description when ``key_id`` is set."""

    type: str
    organization_id: uuid.UUID
    dedupe_key: str
    key_id: uuid.UUID | None = None
    data: dict[str, Any] = field(default_factory=dict)


def _utc_text(column: Any) -> sa.ColumnElement[str]:
    """A timestamp as fixed UTC text, for dedupe keys built in SQL."""
    return sa.func.to_char(sa.func.timezone("UTC", column), _UTC_TEXT)


def _text(value: Any) -> sa.ColumnElement[str]:
    return sa.cast(value, sa.Text)


def _live_org() -> sa.ColumnElement[bool]:
    return sa.and_(Organization.id == ApiKey.organization_id, Organization.deleted_at.is_(None))


def _unannounced(query: sa.Select[*tuple[Any, ...]]) -> sa.Select[Any]:
    """``query`` (with ``organization_id`` and ``dedupe_key`` columns) without the rows already recorded."""
    due = query.subquery("due")
    recorded = sa.exists().where(
        NotificationEvent.organization_id == due.c.organization_id, NotificationEvent.dedupe_key == due.c.dedupe_key
    )
    return sa.select(due).where(~recorded)


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat() if moment is not None else None


def expiring_keys(now: datetime) -> list[Due]:
    """Keys that still work and expire within 7 days: the narrowest warning that applies (a key created a few
    hours before its expiry gets the 1-day warning only)."""
    tiers = sorted(EXPIRY_WARNINGS_DAYS)
    days = sa.case(*((ApiKey.expires_at <= now + timedelta(days=d), d) for d in tiers))
    dedupe = "key.expiring:" + _text(ApiKey.id) + ":" + _text(days) + ":" + _utc_text(ApiKey.expires_at)
    query = (
        sa.select(ApiKey.organization_id, ApiKey.id.label("key_id"), days.label("days"), dedupe.label("dedupe_key"))
        .join(Organization, _live_org())
        .where(
            ApiKey.expires_at > now,
            ApiKey.expires_at <= now + timedelta(days=tiers[-1]),
            ApiKey.revoked_at.is_(None),  # a rolled key stops first; its successor (same expiry) is warned
        )
    )
    return [
        Due("key.expiring", row.organization_id, row.dedupe_key, row.key_id, {"days": row.days})
        for row in db.session.execute(_unannounced(query))
    ]


def expired_keys(now: datetime) -> list[Due]:
    """Keys that expired in the last 7 days while they still worked (not revoked before their expiry)."""
    dedupe = "key.expired:" + _text(ApiKey.id) + ":" + _utc_text(ApiKey.expires_at)
    query = (
        sa.select(ApiKey.organization_id, ApiKey.id.label("key_id"), dedupe.label("dedupe_key"))
        .join(Organization, _live_org())
        .where(
            ApiKey.expires_at <= now,
            ApiKey.expires_at > now - EXPIRED_LOOKBACK,
            sa.or_(ApiKey.revoked_at.is_(None), ApiKey.revoked_at > ApiKey.expires_at),
        )
    )
    return [
        Due("key.expired", row.organization_id, row.dedupe_key, row.key_id)
        for row in db.session.execute(_unannounced(query))
    ]


def idle_keys(now: datetime) -> list[Due]:
    """In organizations that chose ``idle_key_days``: working keys at least that old with no call for as long.

    The last call is ``api_keys.last_used_at``, which verification keeps (to the minute)."""
    idle_for = sa.func.make_interval(0, 0, 0, Organization.idle_key_days, type_=sa.Interval)
    cutoff = sa.literal(now, sa.DateTime(timezone=True)) - idle_for
    dedupe = "key.idle:" + _text(ApiKey.id) + ":" + sa.func.coalesce(_utc_text(ApiKey.last_used_at), "never")
    query = (
        sa.select(
            ApiKey.organization_id,
            ApiKey.id.label("key_id"),
            Organization.idle_key_days,
            ApiKey.last_used_at,
            dedupe.label("dedupe_key"),
        )
        .join(Organization, _live_org())
        .where(
            Organization.idle_key_days.is_not(None),
            ApiKey.revoked_at.is_(None),
            sa.or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now),
            ApiKey.created_at <= cutoff,
            sa.or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at <= cutoff),
        )
    )
    return [
        Due(
            "key.idle",
            row.organization_id,
            row.dedupe_key,
            row.key_id,
            {"idle_days": row.idle_key_days, "last_used_at": _iso(row.last_used_at)},
        )
        for row in db.session.execute(_unannounced(query))
    ]


def quota_thresholds(now: datetime) -> list[Due]:
    """Organizations whose successful calls this UTC month reached 80% or 100% of the month's quota.

    Only the highest threshold reached fires, and never after a higher one did: an organization that went from
    70% to 105% between two passes is told about 100% only."""
    month_start = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    month = month_start.date()
    prefix = f"quota.threshold:{month:%Y-%m}:"
    recent = sa.select(UsageOrgHourly.organization_id).where(
        UsageOrgHourly.bucket >= max(month_start, now - QUOTA_LOOKBACK),
        UsageOrgHourly.bucket <= now,
        UsageOrgHourly.ok > 0,
    )
    at_top = sa.exists().where(
        NotificationEvent.organization_id == Organization.id,
        NotificationEvent.dedupe_key == f"{prefix}{max(QUOTA_THRESHOLDS)}",
    )
    used = sa.func.sum(UsageOrgHourly.ok)
    rows = db.session.execute(
        sa.select(Organization, used.label("used"))
        .join(
            UsageOrgHourly,
            sa.and_(
                UsageOrgHourly.organization_id == Organization.id,
                UsageOrgHourly.bucket >= month_start,
                UsageOrgHourly.bucket <= now,
            ),
        )
        .where(Organization.id.in_(recent), Organization.deleted_at.is_(None), ~at_top)
        .group_by(Organization.id)
        .having(used * 100 >= Organization.quota_sql(month) * min(QUOTA_THRESHOLDS))
    ).all()
    if not rows:
        return []
    recorded = {
        (org_id, dedupe_key)
        for org_id, dedupe_key in db.session.execute(
            sa.select(NotificationEvent.organization_id, NotificationEvent.dedupe_key).where(
                NotificationEvent.organization_id.in_([org.id for org, _ in rows]),
                NotificationEvent.dedupe_key.in_([f"{prefix}{p}" for p in QUOTA_THRESHOLDS]),
            )
        )
    }
    due = []
    for org, total in rows:
        quota, used_calls = org.quota_for(month), int(total)
        reached = [p for p in QUOTA_THRESHOLDS if quota > 0 and used_calls * 100 >= quota * p]
        if not reached or any((org.id, f"{prefix}{p}") in recorded for p in QUOTA_THRESHOLDS if p >= max(reached)):
            continue
        percent = max(reached)
        data = {
            "percent": percent,
            "used": used_calls,
            "quota": quota,
            "month": f"{month:%Y-%m}",
            "hard": org.plan_info.hard_quota,
        }
        due.append(Due("quota.threshold", org.id, f"{prefix}{percent}", data=data))
    return due


def rate_limit_refusals(now: datetime) -> list[Due]:
    """Organizations with calls refused for the rate limit in an hour of the last two: one event per hour."""
    since = (now - RATELIMIT_LOOKBACK).astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    refused = sa.func.sum(UsageOrgHourly.rate_limited)
    dedupe = "ratelimit.exceeded:" + _utc_text(UsageOrgHourly.bucket)
    query = (
        sa.select(
            UsageOrgHourly.organization_id,
            UsageOrgHourly.bucket.label("hour"),
            refused.label("refused"),
            dedupe.label("dedupe_key"),
        )
        .join(
            Organization,
            sa.and_(Organization.id == UsageOrgHourly.organization_id, Organization.deleted_at.is_(None)),
        )
        .where(UsageOrgHourly.bucket >= since, UsageOrgHourly.bucket <= now)
        .group_by(UsageOrgHourly.organization_id, UsageOrgHourly.bucket)
        .having(refused > 0)
    )
    return [
        Due(
            "ratelimit.exceeded",
            row.organization_id,
            row.dedupe_key,
            data={"hour": _iso(row.hour), "refused": int(row.refused)},
        )
        for row in db.session.execute(_unannounced(query))
    ]


FINDERS = (expiring_keys, expired_keys, idle_keys, quota_thresholds, rate_limit_refusals)


def run_once(now: datetime | None = None, *, exclusive: bool = True) -> dict[str, int]:
    """Fire the scheduled events due at ``now`` and commit; returns how many fired, per event type.

    With ``exclusive`` (the default) a pass that finds another one running returns ``{}`` at once and does
    nothing; without it, the two race and the dedupe keys still let each event through once."""
    moment = now or utcnow()
    maintenance.fold()  # quota and rate-limit events read the rollups: bring them up to date (commits)
    if exclusive and not db.session.scalar(sa.text("SELECT pg_try_advisory_xact_lock(:id)"), {"id": LOCK_ID}):
        db.session.rollback()
        return {}
    fired = dict.fromkeys(SCHEDULED_EVENTS, 0)
    try:
        due = [item for find in FINDERS for item in find(moment)]
        _emit_all(due, moment, fired)
        db.session.commit()  # also ends the advisory lock
    except BaseException:
        db.session.rollback()
        raise
    return fired


def _emit_all(due: list[Due], moment: datetime, fired: dict[str, int]) -> None:
    if not due:
        return
    org_ids = {item.organization_id for item in due}
    orgs = {o.id: o for o in db.session.scalars(sa.select(Organization).where(Organization.id.in_(org_ids)))}
    key_ids = {item.key_id for item in due if item.key_id is not None}
    keys = {k.id: k for k in db.session.scalars(sa.select(ApiKey).where(ApiKey.id.in_(key_ids)))} if key_ids else {}
    # Every pass inserts in one order, so two racing passes wait on each other's rows instead of deadlocking.
    for item in sorted(due, key=lambda d: (str(d.organization_id), d.dedupe_key)):
        data = {"key": key_data(keys[item.key_id]), **item.data} if item.key_id is not None else item.data
        event = emit(orgs[item.organization_id], item.type, data, dedupe_key=item.dedupe_key, at=moment)
        if event is not None:
            fired[item.type] += 1


def claim_turn(interval: float) -> bool:
    """Whether this process runs the pass of the current ``interval``-second window: the first process of all
    to ask does (a fixed-window counter in PostgreSQL, portal/ratelimit.py), so several workers on several
    servers run one pass per window between them. Commits."""
    window = timedelta(seconds=max(1, round(interval)))
    count, window_start = ratelimit.take(TURN_BUCKET, window)
    if count == 1:
        db.session.execute(
            sa.text("DELETE FROM rate_limit_tracking WHERE bucket = :bucket AND window_start < :start"),
            {"bucket": TURN_BUCKET, "start": window_start},
        )
    db.session.commit()
    return count == 1
