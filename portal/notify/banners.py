"""The warnings shown above the keys list and the usage dashboard: the month's quota nearly or wholly used, and
working keys about to expire. One function computes them for both pages, so they always say the same thing.

Two cheap queries: the month's quota (the usage dashboard's own :class:`~portal.usage.services.Quota`, read from
the hourly rollup; the dashboard passes the one it already has) and the organization's unrevoked keys expiring
within the week (the partial index on unrevoked keys, at most the plan's key limit of rows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from portal.db import org_scoped
from portal.extensions import db
from portal.models import ApiKey, Organization
from portal.usage.services import Quota, month_quota

EXPIRY_WINDOW = timedelta(days=7)  # the same week as the first ``key.expiring`` notice
EXPIRING_LISTED = 5  # keys named in the banner; the rest are counted
UPGRADE_SUBJECT = "More API calls"  # the mail to support when no UPGRADE_URL is configured


@dataclass(frozen=True)
class QuotaBanner:
    """The month's quota at ``near`` (80% or more) or ``over`` (all of it), as :attr:`Quota.level` says."""

    quota: Quota

    @property
    def level(self) -> str:
        return self.quota.level

    @property
    def percent(self) -> int:
        """Rounded down, so 99.6% never reads as 100% while calls still go through."""
        return math.floor(self.quota.percent)

    @property
    def refused(self) -> bool:
        """Calls are refused now: the quota is used up on a plan that stops calls at it."""
        return self.level == "over" and self.quota.plan.hard_quota

    @property
    def refused_until(self) -> datetime:
        """When calls work again: the next UTC month."""
        return self.quota.month_end


@dataclass(frozen=True)
class ExpiryBanner:
    """Working keys that expire within :data:`EXPIRY_WINDOW`, soonest first: the first few, and how many."""

    keys: list[ApiKey]
    total: int

    @property
    def unlisted(self) -> int:
        return self.total - len(self.keys)


@dataclass(frozen=True)
class Banners:
    quota: QuotaBanner | None = None
    expiry: ExpiryBanner | None = None

    def __bool__(self) -> bool:
        return self.quota is not None or self.expiry is not None


def for_org(org: Organization, now: datetime, *, quota: Quota | None = None) -> Banners:
    """The banners ``org`` gets at ``now``; ``quota`` when the caller has already read this month's."""
    if quota is None and org.plan_info.monthly_quota:
        quota = month_quota(org.id, org.plan_info, now, org.created_at)
    quota_banner = QuotaBanner(quota) if quota is not None and quota.level in ("near", "over") else None
    return Banners(quota=quota_banner, expiry=expiring_keys(org, now))


def expiring_keys(org: Organization, now: datetime) -> ExpiryBanner | None:
    """Unrevoked keys whose expiry falls in the next week (a rolled key's grace period is not an expiry)."""
    total = sa.func.count().over().label("total")
    rows = db.session.execute(
        org_scoped(ApiKey, org.id)
        .add_columns(total)
        .where(
            ApiKey.revoked_at.is_(None),
            ApiKey.expires_at > now,
            ApiKey.expires_at <= now + EXPIRY_WINDOW,
        )
        .order_by(ApiKey.expires_at, ApiKey.name, ApiKey.id)
        .limit(EXPIRING_LISTED)
    ).all()
    if not rows:
        return None
    return ExpiryBanner(keys=[row[0] for row in rows], total=int(rows[0].total))
