"""The bell in the header and the events page it opens.

The bell counts the organization's events after the member's read marker (``memberships.events_seen_at``), with
one indexed query, only on pages inside an organization. Opening the events page moves the marker to the newest
event it lists: like a notifications inbox, looking at the list is reading it, and a member who has seen the
list does not expect a lit badge until they press a button. The marker is the member's own view state (no one
else's data changes, nothing is audited), it only moves forward, and only the unfiltered first page moves it, so
a filtered view does not mark as read what it hid.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from flask import g, render_template, request, url_for
from flask_login import current_user

from portal.db import org_scoped
from portal.extensions import db
from portal.http import page_arg
from portal.models import ApiKey, Membership
from portal.notify import bp, feed
from portal.notify.catalogue import EVENTS
from portal.orgs.context import can, org_view
from portal.timeutil import utcnow

BADGE_MAX = 99  # shown as "99+" above this; feed.count_since stops counting at 100


@dataclass(frozen=True)
class Bell:
    """What the header shows: the link's target and how many events are new to this member."""

    url: str
    unseen: int

    @property
    def badge(self) -> str:
        return f"{BADGE_MAX}+" if self.unseen > BADGE_MAX else str(self.unseen)

    @property
    def label(self) -> str:
        """The link's accessible name: the count in words, since the badge itself is hidden from screen readers."""
        if not self.unseen:
            return "Events: nothing new"
        if self.unseen > BADGE_MAX:
            return f"Events: more than {BADGE_MAX} new"
        return f"Events: {self.unseen} new"


def unseen_count(membership: Membership) -> int:
    """Events after the member's marker, capped (one query on ``ix_notification_events_org_occurred``)."""
    return feed.count_since(membership.organization_id, membership.events_seen_at)


def mark_seen(membership: Membership, newest: datetime) -> None:
    """Move the member's marker forward to ``newest`` (never back: another tab may have seen later events)."""
    db.session.execute(
        sa.update(Membership)
        .where(Membership.id == membership.id)
        .values(events_seen_at=sa.func.greatest(sa.func.coalesce(Membership.events_seen_at, newest), newest))
    )
    db.session.commit()


@bp.app_template_global("notification_bell")
def notification_bell() -> Bell | None:
    """The bell of the organization this page belongs to; None outside an organization. Counted once per
    request, however often the header is drawn."""
    membership: Membership | None = g.get("membership")
    if membership is None or not current_user.is_authenticated:
        return None
    cached: Bell | None = g.get("notification_bell")
    if cached is None:
        slug = membership.organization.slug
        cached = Bell(url_for("notify.events", slug=slug), unseen_count(membership))
        g.notification_bell = cached
    return cached


@dataclass(frozen=True)
class Subject:
    """What an event is about, as a link on the events page."""

    text: str
    url: str


def _people_with_pages(organization_id: uuid.UUID, user_ids: set[uuid.UUID]) -> set[uuid.UUID]:
    """Of ``user_ids``, those with a person page here (orgs.offboarding): members, and anyone who made a key."""
    if not user_ids:
        return set()
    members = org_scoped(Membership, organization_id).where(Membership.user_id.in_(user_ids))
    creators = org_scoped(ApiKey, organization_id).where(ApiKey.created_by_id.in_(user_ids))
    query: sa.CompoundSelect = sa.union(
        members.with_only_columns(Membership.user_id), creators.with_only_columns(ApiKey.created_by_id)
    )
    return set(db.session.scalars(sa.select(query.subquery().c[0])))


def _user_id(item: feed.FeedItem) -> uuid.UUID | None:
    member = item.data.get("member") or {}
    try:
        return uuid.UUID(str(member.get("user_id")))
    except ValueError:
        return None


def subjects(items: list[feed.FeedItem], slug: str, organization_id: uuid.UUID) -> dict[uuid.UUID, Subject]:
    """A link for each event that names a key, a person or the month's usage, by event id."""
    people: set[uuid.UUID] = set()
    if can("members.manage"):
        people = _people_with_pages(
            organization_id, {uid for item in items if item.type.startswith("member.") and (uid := _user_id(item))}
        )
    links: dict[uuid.UUID, Subject] = {}
    for item in items:
        key = item.data.get("key") or {}
        member = item.data.get("member") or {}
        if item.type.startswith("key.") and key.get("id"):
            links[item.id] = Subject(
                f"{key.get('name', 'Key')} ({key.get('hint', '')})",
                url_for("keys.detail", slug=slug, key_id=key["id"]),
            )
        elif item.type.startswith("member.") and (uid := _user_id(item)) in people:
            links[item.id] = Subject(
                member.get("name") or member.get("email") or "Member",
                url_for("orgs.offboarding", slug=slug, user_id=uid),
            )
        elif item.type in ("quota.threshold", "ratelimit.exceeded"):
            links[item.id] = Subject("Usage", url_for("usage.dashboard", slug=slug))
    return links


@bp.get("/orgs/<slug>/events")
@org_view()
def events(slug: str) -> Any:
    """What happened in the organization that people were told about, newest first; opening the unfiltered
    first page marks it read."""
    requested = request.args.get("type") or None
    problems = []
    if requested is not None and requested not in EVENTS:
        problems.append(f"There is no event type “{requested[:50]}”; showing every event.")
        requested = None
    page = page_arg()
    listed = feed.recent(g.org.id, page=page, event_type=requested)
    seen_before = g.membership.events_seen_at
    if requested is None and page == 1 and listed.items:
        mark_seen(g.membership, listed.items[0].occurred_at)
    return render_template(
        "notify/feed.html",
        events=listed,
        event_types=EVENTS,
        selected_type=requested,
        problems=problems,
        seen_before=seen_before,
        subjects=subjects(listed.items, slug, g.org.id),
        now=utcnow(),
    )
