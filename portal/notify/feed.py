"""The organization's recent events, as the notifications page and the bell show them."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from portal.db import org_scoped
from portal.extensions import db
from portal.models import NotificationEvent
from portal.notify.catalogue import EVENTS, TEST_EVENT
from portal.notify.wording import describe
from portal.pagination import Page, paginate


@dataclass(frozen=True)
class FeedItem:
    id: uuid.UUID
    type: str
    label: str
    summary: str
    occurred_at: datetime
    data: dict[str, Any] = field(default_factory=dict)  # the payload's ``data``: what the event names


def _item(event: NotificationEvent) -> FeedItem:
    known = EVENTS.get(event.type)
    return FeedItem(
        event.id,
        event.type,
        known.label if known else event.type,
        describe(event.payload),
        event.occurred_at,
        event.payload.get("data") or {},
    )


def recent(
    organization_id: uuid.UUID, *, page: int = 1, per_page: int = 50, event_type: str | None = None
) -> Page[FeedItem]:
    """Newest first; test events sent to one endpoint are not the organization's news."""
    query = org_scoped(NotificationEvent, organization_id).where(NotificationEvent.type != TEST_EVENT)
    if event_type:
        query = query.where(NotificationEvent.type == event_type)
    query = query.order_by(NotificationEvent.occurred_at.desc(), NotificationEvent.id)

    def fetch(limit: int, offset: int) -> list[FeedItem]:
        return [_item(e) for e in db.session.scalars(query.limit(limit).offset(offset))]

    return paginate(fetch, page=page, per_page=per_page)


def count_since(organization_id: uuid.UUID, since: datetime | None) -> int:
    """Events after ``since`` (all of them when None), for the bell's badge; capped at 100 (shown as 99+)."""
    query = org_scoped(NotificationEvent, organization_id).where(NotificationEvent.type != TEST_EVENT)
    if since is not None:
        query = query.where(NotificationEvent.occurred_at > since)
    return int(db.session.scalar(sa.select(sa.func.count()).select_from(query.limit(100).subquery())) or 0)
