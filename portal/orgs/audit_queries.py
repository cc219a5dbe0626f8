"""The organization's audit trail as its pages read it: filtered by who, what and when, newest first."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import sqlalchemy as sa

from portal.db import count_rows, org_scoped
from portal.extensions import db
from portal.models import AuditEvent, Organization
from portal.pagination import Page, paginate


@dataclass(frozen=True)
class AuditFilters:
    """Which audit events to show: by who (the actor as the log names them), what (the action) and when (UTC
    days, both ends included). Empty fields do not filter."""

    actor: str | None = None
    action: str | None = None
    since: date | None = None
    until: date | None = None

    def query_args(self) -> dict[str, str]:
        """The filters as query-string arguments, so the page links keep them."""
        args = {"actor": self.actor, "action": self.action, "since": self.since, "until": self.until}
        return {name: str(value) for name, value in args.items() if value}


def _filtered(query: sa.Select[Any], filters: AuditFilters) -> sa.Select[Any]:
    if filters.actor:
        query = query.where(AuditEvent.actor_label == filters.actor)
    if filters.action:
        query = query.where(AuditEvent.action == filters.action)
    if filters.since:
        query = query.where(AuditEvent.created_at >= datetime.combine(filters.since, time.min, UTC))
    if filters.until:
        query = query.where(AuditEvent.created_at < datetime.combine(filters.until + timedelta(days=1), time.min, UTC))
    return query


def audit_events(
    org: Organization, *, page: int = 1, per_page: int = 50, filters: AuditFilters | None = None
) -> Page[AuditEvent]:
    """The organization's audit events, newest first, narrowed by ``filters``."""
    query = _filtered(org_scoped(AuditEvent, org.id), filters or AuditFilters())
    ordered = query.order_by(AuditEvent.created_at.desc(), AuditEvent.id)
    return paginate(
        lambda limit, offset: db.session.scalars(ordered.limit(limit).offset(offset)).all(),
        page=page,
        per_page=per_page,
        total=count_rows(query),
    )


def audit_choices(org: Organization) -> tuple[list[str], list[str]]:
    """The actors and the actions the organization's audit log holds, for its filters (one query)."""
    rows = db.session.execute(
        sa.select(AuditEvent.actor_label, AuditEvent.action)
        .where(AuditEvent.organization_id == org.id)
        .group_by(AuditEvent.actor_label, AuditEvent.action)
    ).all()
    return sorted({r.actor_label for r in rows}, key=str.casefold), sorted({r.action for r in rows})


def audit_event(org: Organization, action: str) -> AuditEvent | None:
    """The latest event of ``action`` in the organization (e.g. who deleted it, for the staff page)."""
    return db.session.scalar(
        org_scoped(AuditEvent, org.id)
        .where(AuditEvent.action == action)
        .order_by(AuditEvent.created_at.desc())
        .limit(1)
    )
