"""Emitting an organization's events: the event row, its webhook deliveries and its mails, in one transaction.

``emit()`` adds to the caller's transaction and commits nothing: the event is announced if and only if the
change it describes is kept. Events that come from an audited action (a key created, rolled or revoked, a member
joining or removed) are emitted by :func:`from_audit`, called by ``portal.audit.record``, so every path that
audits such an action (pages, CLI, API, staff) also notifies.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from portal import mail
from portal.extensions import db
from portal.models import ApiKey, AuditEvent, Membership, NotificationEvent, NotificationRule, Organization, User
from portal.notify.catalogue import EVENTS, PAYLOAD_VERSION, TEST_EVENT
from portal.notify.wording import describe
from portal.timeutil import utcnow

log = logging.getLogger("portal.notify")

WEBHOOKS_ENQUEUED = "portal.notify.webhooks_enqueued"  # db.session.info flag: wake the deliverer after commit

# Audited actions that are also notification events (same name).
AUDITED_EVENTS = frozenset(
    {"key.created", "key.rolled", "key.revoked", "key.leak_reported", "member.joined", "member.removed"}
)

_AUDIENCE_ROLES: dict[str, tuple[str, ...]] = {
    "nobody": (),
    "owners": ("owner",),
    "admins": ("owner", "admin"),
    "members": ("owner", "admin", "developer", "viewer"),
}


def key_data(api_key: ApiKey) -> dict[str, Any]:
    """A key as events describe it: never the secret, only its hint."""
    return {
        "id": str(api_key.id),
        "name": api_key.name,
        "hint": api_key.hint,
        "environment": api_key.environment,
        "expires_at": api_key.expires_at.isoformat() if api_key.expires_at else None,
    }


def payload_for(
    event_id: uuid.UUID, org: Organization, event_type: str, data: dict[str, Any], at: datetime
) -> dict[str, Any]:
    """The versioned JSON body every endpoint receives (documented in the OpenAPI document's ``webhooks``)."""
    return {
        "id": f"evt_{event_id.hex}",
        "type": event_type,
        "version": PAYLOAD_VERSION,
        "created_at": at.isoformat(),
        "organization": {"id": str(org.id), "slug": org.slug, "name": org.name},
        "data": data,
    }


def emit(
    org: Organization,
    event_type: str,
    data: dict[str, Any],
    *,
    dedupe_key: str | None = None,
    at: datetime | None = None,
    skip_mail_to: Iterable[str] = (),
) -> NotificationEvent | None:
    """Record ``event_type`` for ``org``, queue its deliveries and mails; nothing is committed.

    With ``dedupe_key`` the event is recorded at most once per organization and key, even when several
    schedulers race: the loser gets None and queues nothing. ``skip_mail_to`` leaves out addresses that were
    already told by a mail of their own (a leak report's owners)."""
    if event_type not in EVENTS and event_type != TEST_EVENT:
        raise ValueError(f"unknown event type {event_type!r}")
    moment = at or utcnow()
    event_id = uuid.uuid4()
    payload = payload_for(event_id, org, event_type, data, moment)
    inserted = db.session.execute(
        insert(NotificationEvent)
        .values(
            id=event_id,
            organization_id=org.id,
            type=event_type,
            payload=payload,
            dedupe_key=dedupe_key,
            occurred_at=moment,
        )
        .on_conflict_do_nothing(
            index_elements=["organization_id", "dedupe_key"], index_where=sa.text("dedupe_key IS NOT NULL")
        )
        .returning(NotificationEvent.id)
    ).scalar()
    if inserted is None:
        return None
    event = db.session.get(NotificationEvent, event_id)
    assert event is not None  # noqa: S101 -- just inserted in this transaction
    queue_deliveries(event)
    if event_type != TEST_EVENT:
        _mail(org, event, payload, skip={a.lower() for a in skip_mail_to})
    return event


def _mail(org: Organization, event: NotificationEvent, payload: dict[str, Any], *, skip: set[str]) -> None:
    """Queue the event's mails. Without ``PUBLIC_BASE_URL`` no mail can be rendered: the event and its webhooks
    are kept (revoking a leaked key must not fail for want of a mail setting) and the gap is logged."""
    label = EVENTS[event.type].label
    for address in mail_recipients(org, event.type):
        if address.lower() in skip:
            continue
        try:
            mail.enqueue(address, "notification", org=org, event=event, label=label, summary=describe(payload))
        except mail.MailConfigError as exc:
            log.warning("event %s %s not mailed: %s", event.type, event.id, exc)
            return


def queue_deliveries(event: NotificationEvent, *, endpoint_id: uuid.UUID | None = None) -> int:
    """One pending delivery per endpoint of the organization subscribed to the event (not disabled); with
    ``endpoint_id`` only to that endpoint (a test event). Returns how many."""
    result: Any = db.session.execute(
        sa.text(
            """
            INSERT INTO webhook_deliveries (endpoint_id, event_id, next_attempt_at)
            SELECT e.id, :event_id, :at FROM webhook_endpoints e
            WHERE e.organization_id = :org AND e.disabled_at IS NULL
              AND (CAST(:endpoint AS uuid) IS NULL AND (:type = ANY(e.events) OR '*' = ANY(e.events))
                   OR e.id = CAST(:endpoint AS uuid))
            """
        ),
        {
            "event_id": event.id,
            "at": event.occurred_at,
            "org": event.organization_id,
            "type": event.type,
            "endpoint": endpoint_id,
        },
    )
    queued = int(result.rowcount)
    if queued:
        db.session.info[WEBHOOKS_ENQUEUED] = True
    return queued


def mail_recipients(org: Organization, event_type: str) -> list[str]:
    """The addresses an event is mailed to under the organization's rule (or the catalogue's default)."""
    rule = db.session.get(NotificationRule, (org.id, event_type))
    audience = rule.audience if rule else EVENTS[event_type].default_audience
    addresses: list[str] = list(rule.addresses) if rule else []
    roles = _AUDIENCE_ROLES[audience]
    if roles:
        addresses += member_addresses(org, roles)
    seen: set[str] = set()
    unique = []
    for address in addresses:
        if address.lower() not in seen:
            seen.add(address.lower())
            unique.append(address)
    return unique


def from_audit(record: AuditEvent, actor: User | None) -> None:
    """Emit the notification event of an audited action, if it is one (called by ``portal.audit.record``)."""
    if record.action not in AUDITED_EVENTS or record.organization_id is None:
        return
    org = db.session.get(Organization, record.organization_id)
    if org is None:
        return
    details = record.details or {}
    data: dict[str, Any] = {"actor": record.actor_label}
    # Whoever did it knows: the mail goes to the others the rule names.
    skip: list[str] = [actor.email] if actor is not None else []
    if record.action.startswith("key."):
        api_key = db.session.get(ApiKey, uuid.UUID(str(record.target_id)))
        if api_key is None:
            return
        data["key"] = key_data(api_key)
        if record.action == "key.revoked":
            data["reason"] = details.get("reason", "revoked")
        if record.action == "key.rolled":
            new_key = db.session.get(ApiKey, uuid.UUID(str(details["new_key_id"])))
            data["new_key"] = key_data(new_key) if new_key else None
            data["old_key_stops_at"] = details.get("old_key_stops_at")
        if details.get("reason") == "reported_leaked" or record.action == "key.leak_reported":
            data["source"] = details.get("source")
            skip += member_addresses(org)  # they got the leak report's own mail
    else:
        data["member"] = {
            "user_id": details.get("user_id") or (str(record.actor_id) if record.actor_id else None),
            "email": details.get("email"),
            "name": details.get("name"),
            "role": details.get("role"),
        }
        # A member who removed themselves left, and the mail says so rather than "removed by" themselves.
        left = record.action == "member.removed" and str(record.actor_id or "") == details.get("user_id")
        if details.get("reason"):
            data["reason"] = details["reason"]
        elif left:
            data["reason"] = "left"
    emit(org, record.action, data, skip_mail_to=skip)


def member_addresses(org: Organization, roles: tuple[str, ...] = ("owner",)) -> list[str]:
    """The mail addresses of the organization's members with one of ``roles`` (its owners by default)."""
    return list(
        db.session.scalars(
            sa.select(User.email)
            .join(Membership, Membership.user_id == User.id)
            .where(Membership.organization_id == org.id, Membership.role.in_(roles))
            .order_by(User.email)
        )
    )
