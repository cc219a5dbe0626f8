"""Pre-aggregated usage: what the charts read, so no page view scans raw ``api_key_usage`` rows.

Every INSERT into ``api_key_usage`` appends its aggregated sums to ``usage_rollup_pending`` (statement-level
trigger, migration 0003), so every write path feeds them; ``usage_rollup_fold()`` moves pending sums into the
rollup tables (every lane of organizations; each lane is folded by one folder at a time, migration 0023).
Counts per outcome are columns rather than a dimension: a key-hour is one row however its calls ended, which
keeps the tables small and the scans short. Hours are UTC hours; days are UTC days.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Mapped, mapped_column

from portal.extensions import Model
from portal.models._types import Timestamp


def _org_fk() -> Mapped[uuid.UUID]:
    return mapped_column(UUID(as_uuid=True), sa.ForeignKey("organizations.id", ondelete="CASCADE"))


def _key_fk(primary_key: bool = True) -> Mapped[uuid.UUID]:
    return mapped_column(UUID(as_uuid=True), sa.ForeignKey("api_keys.id", ondelete="CASCADE"), primary_key=primary_key)


def _count() -> Mapped[int]:
    return mapped_column(sa.Integer, server_default="0")


class OutcomeCounts:
    """Calls, split by outcome, and the latency sum (for an average that adds up across buckets)."""

    calls: Mapped[int] = _count()
    ok: Mapped[int] = _count()
    malformed: Mapped[int] = _count()
    unknown: Mapped[int] = _count()
    revoked: Mapped[int] = _count()
    expired: Mapped[int] = _count()
    rate_limited: Mapped[int] = _count()
    forbidden: Mapped[int] = _count()
    quota_exceeded: Mapped[int] = _count()
    latency_ms_sum: Mapped[float] = mapped_column(sa.Float, server_default="0")


class UsageRollupPending(OutcomeCounts, Model):
    """Sums appended by the insert trigger (no upsert: writers never wait on each other), not yet folded."""

    __tablename__ = "usage_rollup_pending"

    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    organization_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    key_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    environment: Mapped[str] = mapped_column(sa.String(7))
    bucket: Mapped[datetime] = mapped_column(Timestamp)
    endpoint: Mapped[str] = mapped_column(sa.String(200))


class UsageOrgHourly(OutcomeCounts, Model):
    """Per organization, UTC hour and environment: the dashboard chart, its totals and the month's quota."""

    __tablename__ = "usage_org_hourly"
    # Organizations with calls in the last hours, for the scheduler's rate-limit and quota events.
    __table_args__ = (sa.Index("ix_usage_org_hourly_bucket", "bucket"),)

    organization_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), sa.ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True
    )
    bucket: Mapped[datetime] = mapped_column(Timestamp, primary_key=True)
    environment: Mapped[str] = mapped_column(sa.String(7), primary_key=True)


class UsageKeyHourly(OutcomeCounts, Model):
    """Per key and UTC hour: the key page's chart, and the partial days at the edges of a top-keys range."""

    __tablename__ = "usage_key_hourly"
    __table_args__ = (sa.Index("ix_usage_key_hourly_org_bucket", "organization_id", "bucket"),)

    key_id: Mapped[uuid.UUID] = _key_fk()
    bucket: Mapped[datetime] = mapped_column(Timestamp, primary_key=True)
    organization_id: Mapped[uuid.UUID] = _org_fk()
    environment: Mapped[str] = mapped_column(sa.String(7))


class UsageKeyDaily(OutcomeCounts, Model):
    """Per key and UTC day: top keys over long ranges read 30 rows per key instead of 720."""

    __tablename__ = "usage_key_daily"
    # No counts in the index: an upsert that only changes counts stays a HOT update (no index writes).
    __table_args__ = (sa.Index("ix_usage_key_daily_org_day", "organization_id", "day"),)

    key_id: Mapped[uuid.UUID] = _key_fk()
    day: Mapped[date] = mapped_column(sa.Date, primary_key=True)
    organization_id: Mapped[uuid.UUID] = _org_fk()
    environment: Mapped[str] = mapped_column(sa.String(7))


class UsageEndpointHourly(Model):
    """Per organization, UTC hour and endpoint: the dashboard's top endpoints."""

    __tablename__ = "usage_endpoint_hourly"

    organization_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), sa.ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True
    )
    bucket: Mapped[datetime] = mapped_column(Timestamp, primary_key=True)
    endpoint: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    calls: Mapped[int] = _count()
    errors: Mapped[int] = _count()


class UsageKeyEndpointDaily(Model):
    """Per key, UTC day and endpoint: the key page's top endpoints (whole UTC days, kept small on purpose)."""

    __tablename__ = "usage_key_endpoint_daily"

    key_id: Mapped[uuid.UUID] = _key_fk()
    day: Mapped[date] = mapped_column(sa.Date, primary_key=True)
    endpoint: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    organization_id: Mapped[uuid.UUID] = _org_fk()
    calls: Mapped[int] = _count()
    errors: Mapped[int] = _count()


class ClientSeen:
    """A key's calls from one address and user agent in one period, with the first and last of them.

    The address is text (``host(client_ip)``) and both are ``''`` when verification was not told, so they can be
    part of the primary key.
    """

    client_ip: Mapped[str] = mapped_column(sa.String(45), primary_key=True)
    user_agent: Mapped[str] = mapped_column(sa.String(256), primary_key=True)
    calls: Mapped[int] = mapped_column(sa.Integer)
    first_seen: Mapped[datetime] = mapped_column(Timestamp)
    last_seen: Mapped[datetime] = mapped_column(Timestamp)


class UsageClientPending(Model):
    """Client sums appended by the insert trigger (migration 0012), not yet folded into the client rollups."""

    __tablename__ = "usage_client_pending"

    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    organization_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    key_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    bucket: Mapped[datetime] = mapped_column(Timestamp)
    client_ip: Mapped[str] = mapped_column(sa.String(45))
    user_agent: Mapped[str] = mapped_column(sa.String(256))
    calls: Mapped[int] = mapped_column(sa.Integer)
    first_seen: Mapped[datetime] = mapped_column(Timestamp)
    last_seen: Mapped[datetime] = mapped_column(Timestamp)


class UsageKeyClientsHourly(ClientSeen, Model):
    """Per key, UTC hour, address and user agent, for the last 48 hours only: the exact last 24 hours."""

    __tablename__ = "usage_key_clients_hourly"
    # The fold deletes hours older than 48 hours; rows arrive in time order, so BRIN finds them.
    __table_args__ = (sa.Index("ix_usage_key_clients_hourly_bucket", "bucket", postgresql_using="brin"),)

    key_id: Mapped[uuid.UUID] = _key_fk()
    bucket: Mapped[datetime] = mapped_column(Timestamp, primary_key=True)
    organization_id: Mapped[uuid.UUID] = _org_fk()


class UsageKeyClientsDaily(ClientSeen, Model):
    """Per key, UTC day, address and user agent: the 7- and 30-day client lists (rows grow with clients)."""

    __tablename__ = "usage_key_clients_daily"
    __table_args__ = (sa.Index("ix_usage_key_clients_daily_org_day", "organization_id", "day"),)

    key_id: Mapped[uuid.UUID] = _key_fk()
    day: Mapped[date] = mapped_column(sa.Date, primary_key=True)
    organization_id: Mapped[uuid.UUID] = _org_fk()
