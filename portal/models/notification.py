"""Notifications: the organization's events, its mail choices, its webhook endpoints and their deliveries.

An event row is written in the transaction of the change it describes (or by the scheduler, once per
``dedupe_key``); its mails go to the mail outbox and its webhook deliveries to ``webhook_deliveries`` in the same
transaction, so nothing is announced that did not happen and nothing that happened goes unannounced.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column, relationship

from portal.extensions import Model
from portal.models._types import Timestamp, check_in, created_at, uuid_pk

AUDIENCE_NAMES: tuple[str, ...] = ("nobody", "owners", "admins", "members")
DELIVERY_STATUSES: tuple[str, ...] = ("pending", "delivered", "failed")


class NotificationEvent(Model):
    """Something that happened to an organization, as sent to its endpoints (``payload`` is the whole body)."""

    __tablename__ = "notification_events"
    __table_args__ = (
        sa.Index("ix_notification_events_org_occurred", "organization_id", sa.text("occurred_at DESC")),
        # The scheduler's "once per key, threshold and period": a second insert with the same key does nothing.
        sa.Index(
            "uq_notification_events_dedupe",
            "organization_id",
            "dedupe_key",
            unique=True,
            postgresql_where=sa.text("dedupe_key IS NOT NULL"),
        ),
    )

    id: Mapped[uuid_pk]
    organization_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), sa.ForeignKey("organizations.id", ondelete="CASCADE")
    )
    type: Mapped[str] = mapped_column(sa.String(50))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    dedupe_key: Mapped[str | None] = mapped_column(sa.String(200))
    occurred_at: Mapped[datetime] = mapped_column(Timestamp, server_default=sa.func.now())


class NotificationRule(Model):
    """Who an organization's event is mailed to; an event without a row uses the catalogue's default."""

    __tablename__ = "notification_rules"
    __table_args__ = (check_in("audience", AUDIENCE_NAMES, "ck_notification_rules_audience"),)

    organization_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), sa.ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True
    )
    event_type: Mapped[str] = mapped_column(sa.String(50), primary_key=True)
    audience: Mapped[str] = mapped_column(sa.String(10))
    # Listed addresses, mailed besides the audience (a team list, an on-call alias).
    addresses: Mapped[list[str]] = mapped_column(ARRAY(sa.String(254)), server_default=sa.text("'{}'"))


class WebhookEndpoint(Model):
    """An https URL that receives the chosen events, signed per the Standard Webhooks specification.

    The signing secret is sealed (encrypted under a key derived from ``SECRET_KEY``): the portal must read it to
    sign, so it cannot be hashed. After a rotation the previous secret also signs until ``previous_secret_until``.
    """

    __tablename__ = "webhook_endpoints"
    __table_args__ = (sa.Index("ix_webhook_endpoints_org", "organization_id"),)

    id: Mapped[uuid_pk]
    organization_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), sa.ForeignKey("organizations.id", ondelete="CASCADE")
    )
    url: Mapped[str] = mapped_column(sa.String(2000))
    description: Mapped[str] = mapped_column(sa.String(200), server_default="")
    # Event names from portal/notify/catalogue.py, or ["*"] for every event.
    events: Mapped[list[str]] = mapped_column(ARRAY(sa.String(50)))
    secret_sealed: Mapped[bytes] = mapped_column(sa.LargeBinary)
    previous_secret_sealed: Mapped[bytes | None] = mapped_column(sa.LargeBinary)
    previous_secret_until: Mapped[datetime | None] = mapped_column(Timestamp)
    # Paused by a member: deliveries wait and go out on resume. Disabled by the deliverer after repeated
    # failure: no new deliveries until a member enables it again.
    paused_at: Mapped[datetime | None] = mapped_column(Timestamp)
    disabled_at: Mapped[datetime | None] = mapped_column(Timestamp)
    disabled_reason: Mapped[str | None] = mapped_column(sa.String(500))
    consecutive_failures: Mapped[int] = mapped_column(sa.Integer, server_default=sa.text("0"))
    created_by_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), sa.ForeignKey("users.id", ondelete="SET NULL")
    )
    created_at: Mapped[created_at]

    @property
    def status(self) -> str:
        """``disabled``, ``paused`` or ``active``."""
        if self.disabled_at is not None:
            return "disabled"
        return "paused" if self.paused_at is not None else "active"


class WebhookDelivery(Model):
    """One event to one endpoint: pending until delivered (a 2xx answer) or given up."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        check_in("status", DELIVERY_STATUSES, "ck_webhook_deliveries_status"),
        # The deliverer's claim: an endpoint's next pending rows (migration 0017, which replaced an index of all
        # pending rows by due time).
        sa.Index(
            "ix_webhook_deliveries_pending_endpoint",
            "endpoint_id",
            "next_attempt_at",
            postgresql_where=sa.text("status = 'pending'"),
        ),
        sa.Index("ix_webhook_deliveries_endpoint", "endpoint_id", sa.text("created_at DESC")),
        sa.Index("ix_webhook_deliveries_event", "event_id"),
    )

    id: Mapped[uuid_pk]
    endpoint_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), sa.ForeignKey("webhook_endpoints.id", ondelete="CASCADE")
    )
    event_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), sa.ForeignKey("notification_events.id", ondelete="CASCADE")
    )
    status: Mapped[str] = mapped_column(sa.String(10), server_default="pending")
    attempts: Mapped[int] = mapped_column(sa.SmallInteger, server_default=sa.text("0"))
    next_attempt_at: Mapped[datetime] = mapped_column(Timestamp, server_default=sa.func.now())
    last_attempt_at: Mapped[datetime | None] = mapped_column(Timestamp)
    delivered_at: Mapped[datetime | None] = mapped_column(Timestamp)
    created_at: Mapped[created_at]

    endpoint: Mapped[WebhookEndpoint] = relationship()
    event: Mapped[NotificationEvent] = relationship()


class WebhookAttempt(Model):
    """One HTTP attempt of a delivery, for the endpoint's delivery log (the response is truncated)."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (sa.Index("ix_webhook_attempts_delivery", "delivery_id", "attempted_at"),)

    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    delivery_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), sa.ForeignKey("webhook_deliveries.id", ondelete="CASCADE")
    )
    attempted_at: Mapped[datetime] = mapped_column(Timestamp, server_default=sa.func.now())
    status_code: Mapped[int | None] = mapped_column(sa.SmallInteger)
    duration_ms: Mapped[int] = mapped_column(sa.Integer)
    error: Mapped[str | None] = mapped_column(sa.String(500))
    response_excerpt: Mapped[str | None] = mapped_column(sa.String(1000))
