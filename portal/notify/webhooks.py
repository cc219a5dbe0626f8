"""Webhook endpoints' lifecycle: add, edit, pause, resume, enable again, rotate the signing secret, delete.
Shared by the pages and ``flask webhooks``; no Flask request here. Every change is audited with the endpoint's
URL, never its secret. An endpoint's deliveries (its log, a test event, a resend) are in
:mod:`portal.notify.webhook_log`, which audits through the helpers here.

A signing secret exists in plain text only in the :class:`IssuedSecret` returned when it is made (creation or
rotation), for the caller to show once; the row keeps it sealed (:mod:`portal.notify.endpoints`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from flask import current_app

from portal import audit
from portal.db import count_rows, get_org_scoped, org_scoped
from portal.extensions import db
from portal.models import AuditEvent, Organization, User, WebhookDelivery, WebhookEndpoint
from portal.notify import endpoints, events
from portal.notify.catalogue import ALL_EVENTS, UnknownEvent, check_events
from portal.notify.destinations import DestinationError, check_url
from portal.timeutil import utcnow

MAX_ENDPOINTS = 10  # per organization
MAX_DESCRIPTION = 200

# How long the previous signing secret keeps signing after a rotation, by the name the form sends.
OVERLAPS: dict[str, tuple[str, timedelta]] = {
    "none": ("No overlap: the old secret stops now", timedelta(0)),
    "1h": ("1 hour", timedelta(hours=1)),
    "24h": ("24 hours", timedelta(hours=24)),
    "7d": ("7 days", timedelta(days=7)),
}
DEFAULT_OVERLAP = "24h"


class WebhookError(Exception):
    """A webhook change that cannot be made; the message is shown as is. ``field`` names the form field."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class AlreadyDone(WebhookError):
    """A form submitted again (a reload of the page that showed a secret): the first submission's endpoint or
    secret exists, and its secret is not shown again. ``endpoint`` is None when it was deleted since."""

    def __init__(self, message: str, endpoint: WebhookEndpoint | None) -> None:
        super().__init__(message)
        self.endpoint = endpoint


@dataclass(frozen=True)
class IssuedSecret:
    """An endpoint and its new signing secret, which exists in plain text only until this answer is sent."""

    endpoint: WebhookEndpoint
    secret: str


def events_text(names: list[str]) -> str:
    """An endpoint's events as pages, the CLI and the audit trail name them."""
    return "all events" if ALL_EVENTS in names else ", ".join(names)


def checked_url(url: str) -> str:
    """The URL a webhook may be sent to (:func:`check_url` under the app's ``WEBHOOK_ALLOW_PRIVATE``)."""
    try:
        return check_url(url, allow_private=bool(current_app.config["WEBHOOK_ALLOW_PRIVATE"]))
    except DestinationError as exc:
        raise WebhookError(str(exc), "url") from None


def checked_events(names: list[str] | tuple[str, ...]) -> list[str]:
    try:
        return check_events(list(names))
    except UnknownEvent as exc:
        raise WebhookError(str(exc), "events") from None


def checked_description(text: str | None) -> str:
    text = (text or "").strip()
    if len(text) > MAX_DESCRIPTION:
        raise WebhookError(f"Keep the description to {MAX_DESCRIPTION} characters.", "description")
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise WebhookError("Control characters are not allowed.", "description")
    return text


def record_action(
    action: str,
    org: Organization,
    endpoint: WebhookEndpoint,
    actor: User | None,
    actor_label: str | None,
    ip: str | None,
    **details: Any,
) -> None:
    """Audit ``action`` on ``endpoint``: every change to an endpoint or its deliveries names the endpoint's URL."""
    audit.record(
        action,
        organization_id=org.id,
        actor=actor,
        actor_label=actor_label,
        target_type="webhook_endpoint",
        target_id=endpoint.id,
        details={"url": endpoint.url, **details},
        ip=ip,
    )


def _lock_organization(org: Organization) -> datetime | None:
    """Serialize endpoint creation per organization, so the endpoint limit and resubmission checks hold; returns
    when the organization was deleted (read under the lock), else None."""
    return db.session.scalar(sa.select(Organization.deleted_at).where(Organization.id == org.id).with_for_update())


def lock_endpoint(endpoint: WebhookEndpoint) -> WebhookEndpoint:
    """The endpoint re-read under a row lock, so two changes (or a change and the deliverer) do not interleave."""
    db.session.execute(
        sa.select(WebhookEndpoint)
        .where(WebhookEndpoint.id == endpoint.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return endpoint


def _done_with_token(org: Organization, action: str, token: str, target_id: uuid.UUID | None = None) -> str | None:
    """The target id of an earlier ``action`` audited with this form token, else None."""
    query = org_scoped(AuditEvent, org.id).where(
        AuditEvent.action == action, AuditEvent.details["request_token"].astext == token
    )
    if target_id is not None:
        query = query.where(AuditEvent.target_id == str(target_id))
    row = db.session.scalar(query.limit(1))
    return row.target_id if row is not None else None


def list_endpoints(org: Organization) -> list[WebhookEndpoint]:
    return list(db.session.scalars(org_scoped(WebhookEndpoint, org.id).order_by(WebhookEndpoint.created_at)))


def find_endpoint(org: Organization, endpoint_id: Any) -> WebhookEndpoint | None:
    return get_org_scoped(WebhookEndpoint, org.id, endpoint_id)


def create_endpoint(
    org: Organization,
    *,
    url: str,
    events: list[str] | tuple[str, ...],
    description: str | None = None,
    actor: User | None,
    actor_label: str | None = None,
    request_token: str | None = None,
    ip: str | None = None,
) -> IssuedSecret:
    """Add an endpoint with a new signing secret (returned once). ``request_token`` makes a resubmitted form find
    its first endpoint (:class:`AlreadyDone`) instead of adding a second."""
    clean_url = checked_url(url)
    names = checked_events(events)
    text = checked_description(description)
    if _lock_organization(org) is not None:
        db.session.rollback()
        raise WebhookError("This organization was deleted.")
    if request_token and (done := _done_with_token(org, "webhook.created", request_token)) is not None:
        db.session.rollback()
        raise AlreadyDone(
            "This endpoint was already added. Its signing secret is shown only once: rotate it to get a new one.",
            find_endpoint(org, done),
        )
    if count_rows(org_scoped(WebhookEndpoint, org.id)) >= MAX_ENDPOINTS:
        db.session.rollback()
        raise WebhookError(f"{org.name} has {MAX_ENDPOINTS} endpoints, the most it can have: delete one first.")
    secret = endpoints.new_secret()
    endpoint = WebhookEndpoint(
        organization_id=org.id,
        url=clean_url,
        description=text,
        events=names,
        secret_sealed=endpoints.seal_secret(secret),
        created_by_id=actor.id if actor else None,
    )
    db.session.add(endpoint)
    db.session.flush()
    details: dict[str, Any] = {"events": events_text(names), "description": text or None}
    if request_token:
        details["request_token"] = request_token
    record_action("webhook.created", org, endpoint, actor, actor_label, ip, **details)
    db.session.commit()
    return IssuedSecret(endpoint, secret)


def update_endpoint(
    org: Organization,
    endpoint: WebhookEndpoint,
    *,
    url: str,
    events: list[str] | tuple[str, ...],
    description: str | None,
    actor: User | None,
    actor_label: str | None = None,
    ip: str | None = None,
) -> list[str]:
    """Change the URL, events and description; returns what changed (nothing changed: nothing written)."""
    clean_url = checked_url(url)
    names = checked_events(events)
    text = checked_description(description)
    lock_endpoint(endpoint)
    changed = []
    details: dict[str, Any] = {}
    if clean_url != endpoint.url:
        changed.append("URL")
        details["previous_url"] = endpoint.url
        endpoint.url = clean_url
    if names != list(endpoint.events):
        changed.append("events")
        details["events"] = f"{events_text(list(endpoint.events))} → {events_text(names)}"
        endpoint.events = names
    if text != endpoint.description:
        changed.append("description")
        details["description"] = text or None
        endpoint.description = text
    if not changed:
        db.session.commit()  # release the lock
        return []
    record_action("webhook.updated", org, endpoint, actor, actor_label, ip, changed=", ".join(changed), **details)
    db.session.commit()
    return changed


def pause(
    org: Organization,
    endpoint: WebhookEndpoint,
    *,
    actor: User | None,
    actor_label: str | None = None,
    ip: str | None = None,
) -> None:
    """Hold the endpoint's deliveries: they wait, and go out when it is resumed."""
    lock_endpoint(endpoint)
    if endpoint.paused_at is not None:
        db.session.commit()
        raise WebhookError("This endpoint is already paused.")
    endpoint.paused_at = utcnow()
    record_action("webhook.paused", org, endpoint, actor, actor_label, ip)
    db.session.commit()


def resume(
    org: Organization,
    endpoint: WebhookEndpoint,
    *,
    actor: User | None,
    actor_label: str | None = None,
    ip: str | None = None,
) -> None:
    lock_endpoint(endpoint)
    if endpoint.paused_at is None:
        db.session.commit()
        raise WebhookError("This endpoint is not paused.")
    endpoint.paused_at = None
    record_action("webhook.resumed", org, endpoint, actor, actor_label, ip)
    db.session.info[events.WEBHOOKS_ENQUEUED] = True  # waiting deliveries may go now
    db.session.commit()


def enable(
    org: Organization,
    endpoint: WebhookEndpoint,
    *,
    actor: User | None,
    actor_label: str | None = None,
    ip: str | None = None,
) -> None:
    """Take back an endpoint the deliverer disabled after repeated failures: new events are queued for it again
    (what failed meanwhile can be resent from the delivery log)."""
    lock_endpoint(endpoint)
    if endpoint.disabled_at is None:
        db.session.commit()
        raise WebhookError("This endpoint is not disabled.")
    reason = endpoint.disabled_reason
    endpoint.disabled_at = None
    endpoint.disabled_reason = None
    endpoint.consecutive_failures = 0
    record_action("webhook.enabled", org, endpoint, actor, actor_label, ip, reason=reason)
    db.session.commit()


def rotate_secret(
    org: Organization,
    endpoint: WebhookEndpoint,
    overlap: str,
    *,
    actor: User | None,
    actor_label: str | None = None,
    request_token: str | None = None,
    ip: str | None = None,
) -> IssuedSecret:
    """A new signing secret (returned once). With an overlap the old secret also signs until it ends, so a
    receiver can switch without dropping an event; rotating again during an overlap ends the older one's."""
    if overlap not in OVERLAPS:
        raise WebhookError("Choose how long the old secret keeps signing.", "overlap")
    label, period = OVERLAPS[overlap]
    lock_endpoint(endpoint)
    if request_token and _done_with_token(org, "webhook.secret_rotated", request_token, endpoint.id):
        db.session.commit()
        raise AlreadyDone(
            "The secret was already rotated. The new one is shown only once: rotate again to get another.", endpoint
        )
    now = utcnow()
    secret = endpoints.new_secret()
    if period:
        endpoint.previous_secret_sealed = endpoint.secret_sealed
        endpoint.previous_secret_until = now + period
    else:
        endpoint.previous_secret_sealed = None
        endpoint.previous_secret_until = None
    endpoint.secret_sealed = endpoints.seal_secret(secret)
    details: dict[str, Any] = {
        "overlap": label if period else "none",
        "previous_secret_until": endpoint.previous_secret_until.isoformat() if endpoint.previous_secret_until else None,
    }
    if request_token:
        details["request_token"] = request_token
    record_action("webhook.secret_rotated", org, endpoint, actor, actor_label, ip, **details)
    db.session.commit()
    return IssuedSecret(endpoint, secret)


def pending_deliveries(endpoint: WebhookEndpoint) -> int:
    """The endpoint's deliveries not yet sent, which deleting it drops: the delete page shows how many."""
    return count_rows(
        sa.select(WebhookDelivery.id).where(
            WebhookDelivery.endpoint_id == endpoint.id, WebhookDelivery.status == "pending"
        )
    )


def delete_endpoint(
    org: Organization,
    endpoint: WebhookEndpoint,
    *,
    actor: User | None,
    actor_label: str | None = None,
    ip: str | None = None,
) -> None:
    """Remove the endpoint with its delivery log; deliveries not yet sent are dropped."""
    lock_endpoint(endpoint)
    record_action(
        "webhook.deleted",
        org,
        endpoint,
        actor,
        actor_label,
        ip,
        events=events_text(list(endpoint.events)),
        dropped=pending_deliveries(endpoint),
    )
    db.session.delete(endpoint)
    db.session.commit()
