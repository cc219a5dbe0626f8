"""Rotation watch: while a rolled key is in its grace period, is anything still calling it?

The key page shows the old key's calls per UTC hour since the roll, read from the ``usage_key_hourly`` rollup
(never raw events), and says when it has been quiet for long enough to revoke. Hours are whole UTC hours: a
call in the hour of the roll, even a minute before it, counts as a call since the roll, so "quiet" errs on
the side of waiting.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from portal import audit
from portal.extensions import db
from portal.keys.services import KeyActionError, lock_organization
from portal.models import ApiKey, Organization, User
from portal.models.rollup import UsageKeyHourly
from portal.timeutil import utcnow
from portal.usage import maintenance

DEFAULT_QUIET_HOURS = 24
MAX_QUIET_HOURS = 30 * 24
MAX_GRACE = timedelta(days=30)  # a rolled key keeps working at most this long from now
SHOWN_HOURS = 48  # hours listed on the page, newest first; the total covers the whole grace period
HOUR = timedelta(hours=1)
NOT_IN_GRACE = "Only a rolled key that still works can be given more time."


def _hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def in_grace(api_key: ApiKey, now: datetime) -> bool:
    """Rolled, and the old key still works (``revoked_at`` is the end of its grace period)."""
    return api_key.replaced_by_id is not None and api_key.revoked_at is not None and api_key.revoked_at > now


@dataclass(frozen=True)
class RotationWatch:
    rolled_at: datetime
    stops_at: datetime
    hours: list[tuple[datetime, int]]  # (UTC hour, calls), newest first, quiet hours included
    total_calls: int
    last_call_hour: datetime | None  # the latest hour since the roll with a call
    quiet_hours: int  # N, as chosen on the page
    quiet_for: timedelta  # since the end of the last hour with a call, else since the roll

    @property
    def safe_to_revoke(self) -> bool:
        return self.quiet_for >= timedelta(hours=self.quiet_hours)

    @property
    def quiet_whole_hours(self) -> int:
        return int(self.quiet_for.total_seconds() // 3600)


def rolled_at(api_key: ApiKey) -> datetime | None:
    """When the key was rolled: its replacement was made in the same transaction."""
    return db.session.scalar(sa.select(ApiKey.created_at).where(ApiKey.id == api_key.replaced_by_id))


def watch(api_key: ApiKey, quiet_hours: int = DEFAULT_QUIET_HOURS, now: datetime | None = None) -> RotationWatch | None:
    """The old key's traffic since its roll, or None when it is not in a grace period."""
    now = now or utcnow()
    if not in_grace(api_key, now):
        return None
    assert api_key.revoked_at is not None
    since = rolled_at(api_key) or now
    maintenance.fold()
    rows = db.session.execute(
        sa.select(UsageKeyHourly.bucket, UsageKeyHourly.calls).where(
            UsageKeyHourly.key_id == api_key.id,
            UsageKeyHourly.bucket >= _hour(since),
            UsageKeyHourly.calls > 0,
        )
    ).all()
    calls = {bucket: int(n) for bucket, n in rows}
    current = _hour(now)
    hours: list[tuple[datetime, int]] = []
    hour = current
    while hour >= _hour(since) and len(hours) < SHOWN_HOURS:
        hours.append((hour, calls.get(hour, 0)))
        hour -= HOUR
    last = max(calls) if calls else None
    quiet_from = min(now, last + HOUR) if last is not None else since
    return RotationWatch(
        rolled_at=since,
        stops_at=api_key.revoked_at,
        hours=hours,
        total_calls=sum(calls.values()),
        last_call_hour=last,
        quiet_hours=quiet_hours,
        quiet_for=max(timedelta(0), now - quiet_from),
    )


def extend_grace(
    org: Organization, api_key: ApiKey, extra: timedelta, actor: User | None, *, ip: str | None = None
) -> datetime:
    """Keep a rolled key working ``extra`` longer, at most :data:`MAX_GRACE` from now; returns the new end."""
    lock_organization(org)
    db.session.refresh(api_key)  # a revoke may have committed while we waited for the lock
    now = utcnow()
    if not in_grace(api_key, now):
        db.session.rollback()
        raise KeyActionError(NOT_IN_GRACE)
    assert api_key.revoked_at is not None
    old = api_key.revoked_at
    new = old + extra
    limit = now + MAX_GRACE
    if extra <= timedelta(0) or new > limit:
        db.session.rollback()
        raise KeyActionError(
            f"A rolled key can keep working at most {MAX_GRACE.days} days from now (until {limit:%Y-%m-%d %H:%M} UTC)."
        )
    api_key.revoked_at = new
    audit.record(
        "key.grace_extended",
        organization_id=org.id,
        actor=actor,
        target_type="api_key",
        target_id=api_key.id,
        details={"name": api_key.name, "hint": api_key.hint, "from": old.isoformat(), "to": new.isoformat()},
        ip=ip,
    )
    db.session.commit()
    return new
