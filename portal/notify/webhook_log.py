"""An endpoint's deliveries as its page shows them: the log and the last result on the endpoint list, and the
deliveries made by hand (a test event, a resend). Kept apart from the endpoint settings in
:mod:`portal.notify.webhooks` because these read and add ``webhook_deliveries`` rows and leave the endpoint as
it is; they lock and audit through that module's helpers and refuse with its
:class:`~portal.notify.webhooks.WebhookError`, so the pages catch one error.

"Resend" makes a new delivery of the same event (same payload, same ``evt_…`` id) with its own attempts and
retry schedule; the original stays in the log as it ended.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import selectinload

from portal.db import count_rows
from portal.extensions import db
from portal.models import NotificationEvent, Organization, User, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from portal.notify import events
from portal.notify.catalogue import EVENTS, TEST_EVENT
from portal.notify.webhooks import WebhookError, lock_endpoint, record_action
from portal.pagination import Page, paginate
from portal.timeutil import utcnow

DELIVERIES_PER_PAGE = 20


@dataclass(frozen=True)
class LastResult:
    """The outcome of an endpoint's most recent tried delivery, for the endpoint list."""

    status: str  # the delivery's: delivered, pending (retrying) or failed
    at: datetime
    status_code: int | None
    error: str | None


def last_results(endpoint_list: list[WebhookEndpoint]) -> dict[uuid.UUID, LastResult]:
    """Per endpoint (found through its organization), its newest delivery that was tried and that delivery's last
    attempt: two index lookups per endpoint, however long the log."""
    if not endpoint_list:
        return {}
    delivery = (
        sa.select(WebhookDelivery.id, WebhookDelivery.status, WebhookDelivery.last_attempt_at)
        .where(WebhookDelivery.endpoint_id == WebhookEndpoint.id, WebhookDelivery.last_attempt_at.is_not(None))
        .order_by(WebhookDelivery.created_at.desc())
        .limit(1)
        .lateral("d")
    )
    attempt = (
        sa.select(WebhookAttempt.status_code, WebhookAttempt.error)
        .where(WebhookAttempt.delivery_id == delivery.c.id)
        .order_by(WebhookAttempt.attempted_at.desc())
        .limit(1)
        .lateral("a")
    )
    query = (
        sa.select(
            WebhookEndpoint.id, delivery.c.status, delivery.c.last_attempt_at, attempt.c.status_code, attempt.c.error
        )
        .select_from(WebhookEndpoint)
        .join(delivery, sa.true())
        .outerjoin(attempt, sa.true())
        .where(WebhookEndpoint.id.in_([e.id for e in endpoint_list]))
    )
    return {row[0]: LastResult(*row[1:]) for row in db.session.execute(query)}


@dataclass(frozen=True)
class LogEntry:
    """One delivery in an endpoint's log, with its attempts oldest first."""

    delivery: WebhookDelivery
    attempts: list[WebhookAttempt]

    @property
    def event_ref(self) -> str:
        """The event's ``evt_…`` id, the ``webhook-id`` the receiver got, to match the log with its own."""
        return str(self.delivery.event.payload.get("id", f"evt_{self.delivery.event_id.hex}"))


FAILED_FILTER = "failed"


def delivery_log(
    endpoint: WebhookEndpoint, *, page: int = 1, per_page: int = DELIVERIES_PER_PAGE, failed_only: bool = False
) -> Page[LogEntry]:
    """The endpoint's deliveries, newest first; ``failed_only``: those that failed or are being retried."""
    query = sa.select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id)
    if failed_only:
        query = query.where(
            sa.or_(
                WebhookDelivery.status == "failed",
                sa.and_(WebhookDelivery.status == "pending", WebhookDelivery.attempts > 0),
            )
        )
    ordered = query.order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id).options(
        selectinload(WebhookDelivery.event)
    )

    def fetch(limit: int, offset: int) -> list[LogEntry]:
        deliveries = list(db.session.scalars(ordered.limit(limit).offset(offset)))
        attempts: dict[uuid.UUID, list[WebhookAttempt]] = {d.id: [] for d in deliveries}
        if deliveries:
            for attempt in db.session.scalars(
                sa.select(WebhookAttempt)
                .where(WebhookAttempt.delivery_id.in_(list(attempts)))
                .order_by(WebhookAttempt.attempted_at, WebhookAttempt.id)
            ):
                attempts[attempt.delivery_id].append(attempt)
        return [LogEntry(d, attempts[d.id]) for d in deliveries]

    return paginate(fetch, page=page, per_page=per_page, total=count_rows(query))


def find_delivery(endpoint: WebhookEndpoint, delivery_id: Any) -> WebhookDelivery | None:
    """One of the endpoint's deliveries (the endpoint was found within its organization); else None."""
    try:
        key = delivery_id if isinstance(delivery_id, uuid.UUID) else uuid.UUID(str(delivery_id))
    except ValueError:
        return None
    return db.session.scalar(
        sa.select(WebhookDelivery).where(WebhookDelivery.id == key, WebhookDelivery.endpoint_id == endpoint.id)
    )


def send_test(
    org: Organization,
    endpoint: WebhookEndpoint,
    *,
    actor: User | None,
    actor_label: str | None = None,
    ip: str | None = None,
) -> NotificationEvent:
    """Queue a ``webhook.test`` event for this endpoint alone (``events.emit`` would send it to every endpoint
    subscribed to all events). Never mailed, never in the organization's feed."""
    if endpoint.disabled_at is not None:
        raise WebhookError("Enable this endpoint first: a disabled endpoint gets no deliveries.")
    now = utcnow()
    event_id = uuid.uuid4()
    data = {
        "message": "A test event from ProCode Portal: this endpoint receives and verifies events.",
        "endpoint_id": str(endpoint.id),
    }
    event = NotificationEvent(
        id=event_id,
        organization_id=org.id,
        type=TEST_EVENT,
        payload=events.payload_for(event_id, org, TEST_EVENT, data, now),
        occurred_at=now,
    )
    db.session.add(event)
    db.session.flush()
    if events.queue_deliveries(event, endpoint_id=endpoint.id) != 1:
        db.session.rollback()
        raise WebhookError("This endpoint no longer takes deliveries: reload the page.")
    record_action("webhook.test_sent", org, endpoint, actor, actor_label, ip, event_id=event.payload["id"])
    db.session.commit()
    return event


def resend(
    org: Organization,
    endpoint: WebhookEndpoint,
    delivery: WebhookDelivery,
    *,
    actor: User | None,
    actor_label: str | None = None,
    ip: str | None = None,
) -> WebhookDelivery:
    """Queue the delivery's event again for this endpoint, due now, as a new delivery."""
    lock_endpoint(endpoint)
    if endpoint.disabled_at is not None:
        db.session.commit()
        raise WebhookError("Enable this endpoint first: a disabled endpoint gets no deliveries.")
    if delivery.status == "pending":
        db.session.commit()
        raise WebhookError("This delivery is still being sent: it is retried on its own until it succeeds or fails.")
    copy = WebhookDelivery(endpoint_id=endpoint.id, event_id=delivery.event_id, next_attempt_at=utcnow())
    db.session.add(copy)
    event = delivery.event
    record_action(
        "webhook.resent",
        org,
        endpoint,
        actor,
        actor_label,
        ip,
        event_type=event.type,
        event_id=event.payload.get("id"),
        previous_status=delivery.status,
    )
    db.session.info[events.WEBHOOKS_ENQUEUED] = True
    db.session.commit()
    return copy


def event_label(event_type: str) -> str:
    """An event type as the log names it; the test event is not in the catalogue, so it is named here."""
    if event_type == TEST_EVENT:
        return "Test event"
    known = EVENTS.get(event_type)
    return known.label if known else event_type
