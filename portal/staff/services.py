"""What support staff look up: organizations across the whole portal, and one organization's state."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime

import sqlalchemy as sa

from portal import audit
from portal.db import count_rows, org_scoped
from portal.extensions import db
from portal.models import ApiKey, Membership, Organization, User
from portal.orgs.services import SUPPORT_LABEL
from portal.pagination import Page, paginate
from portal.timeutil import utcnow

MAX_QUERY_LENGTH = 100


@dataclass(frozen=True)
class OrgRow:
    org: Organization
    members: int
    keys: int
    active_keys: int


@dataclass
class KeyCounts:
    """Keys of one organization counted by environment and status; never a key itself."""

    cells: dict[tuple[str, str], int] = field(default_factory=dict)

    def get(self, environment: str, status: str) -> int:
        return self.cells.get((environment, status), 0)

    def environment_total(self, environment: str) -> int:
        return sum(n for (env, _), n in self.cells.items() if env == environment)

    def status_total(self, status: str) -> int:
        return sum(n for (_, st), n in self.cells.items() if st == status)

    @property
    def total(self) -> int:
        return sum(self.cells.values())

    @property
    def active(self) -> int:
        """The organization's active keys, as the keys page and the plan check count them."""
        return sum(self.status_total(status) for status in ApiKey.COUNTED_STATUSES)


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def search_orgs(query: str | None, *, page: int = 1, per_page: int = 25) -> Page[OrgRow]:
    """Organizations whose name or slug, or one of whose members' email, contains ``query`` (any case)."""
    moment = utcnow()
    members = (
        sa.select(sa.func.count())
        .select_from(Membership)
        .where(Membership.organization_id == Organization.id)
        .scalar_subquery()
    )
    keys = (
        sa.select(sa.func.count())
        .select_from(ApiKey)
        .where(ApiKey.organization_id == Organization.id)
        .scalar_subquery()
    )
    active = (
        sa.select(sa.func.count())
        .select_from(ApiKey)
        .where(ApiKey.organization_id == Organization.id, ApiKey.counts_toward_limit(moment))
        .scalar_subquery()
    )
    select = sa.select(Organization, members, keys, active)
    text = (query or "").strip()[:MAX_QUERY_LENGTH]
    if text:
        pattern = _like_pattern(text)
        member_email = (
            sa.select(Membership.id)
            .join(User, User.id == Membership.user_id)
            .where(Membership.organization_id == Organization.id, User.email.ilike(pattern, escape="\\"))
        )
        select = select.where(
            sa.or_(
                Organization.name.ilike(pattern, escape="\\"),
                Organization.slug.ilike(pattern, escape="\\"),
                member_email.exists(),
            )
        )
    ordered = select.order_by(sa.func.lower(Organization.name), Organization.slug)
    return paginate(
        lambda limit, offset: [
            OrgRow(org, m, k, a) for org, m, k, a in db.session.execute(ordered.limit(limit).offset(offset))
        ],
        page=page,
        per_page=per_page,
        total=count_rows(select.with_only_columns(Organization.id)),
    )


def key_counts(org: Organization) -> KeyCounts:
    """Counts grouped in SQL by environment and status; hashes and hints never leave the database."""
    status = ApiKey.status_sql(utcnow()).label("status")
    query = (
        org_scoped(ApiKey, org.id)
        .with_only_columns(ApiKey.environment, status, sa.func.count())
        .group_by(ApiKey.environment, status)
    )
    counts = KeyCounts()
    for environment, st, n in db.session.execute(query):
        counts.cells[(environment, st)] = int(n)
    return counts


def month_start(moment: datetime) -> date:
    """The first day of ``moment``'s UTC month."""
    return moment.astimezone(UTC).date().replace(day=1)


def extend_quota(org: Organization, calls: int, *, reason: str, actor: User | None, ip: str | None = None) -> int:
    """Raise this UTC month's quota by ``calls`` (extensions in one month add up); the new quota."""
    if calls < 1:
        raise ValueError("the extension must be at least one call")
    db.session.execute(sa.select(Organization.id).where(Organization.id == org.id).with_for_update())
    db.session.refresh(org)
    month = month_start(utcnow())
    current = org.quota_extension if org.quota_extension_month == month else 0
    org.quota_extension, org.quota_extension_month = current + calls, month
    audit.record(
        "org.quota_extended",
        organization_id=org.id,
        actor=actor,
        actor_label=SUPPORT_LABEL,
        target_type="organization",
        target_id=org.id,
        details={"calls": calls, "month": month.strftime("%Y-%m"), "reason": reason.strip()},
        ip=ip,
    )
    db.session.commit()
    return org.quota_for(month)
