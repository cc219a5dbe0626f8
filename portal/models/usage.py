"""Records of verified calls, counts of calls with invalid keys, and the counters the rate limiter keeps per window."""

from __future__ import annotations

import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import INET, UUID
from sqlalchemy.orm import Mapped, mapped_column

from portal.extensions import Model
from portal.models._types import Timestamp, check_in
from portal.verification.outcomes import INVALID_KEY_OUTCOMES, OUTCOMES


class ApiKeyUsage(Model):
    """One row per answered verification of an existing key, valid or not (invalid keys: ``InvalidKeyCount``).

    Partitioned by UTC day of ``occurred_at`` (migration 0022, ``portal/usage/partitions.py``): retention drops
    whole days, and the primary key holds the partition key as PostgreSQL requires."""

    __tablename__ = "api_key_usage"
    __table_args__ = (
        check_in("outcome", OUTCOMES, "ck_api_key_usage_outcome"),
        sa.Index("ix_api_key_usage_org_time", "organization_id", "occurred_at"),
        sa.Index("ix_api_key_usage_key_time", "key_id", "occurred_at"),
        {"postgresql_partition_by": "RANGE (occurred_at)"},
    )

    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    key_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    organization_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    occurred_at: Mapped[datetime] = mapped_column(Timestamp, server_default=sa.func.now(), primary_key=True)
    endpoint: Mapped[str | None] = mapped_column(sa.String(200))
    status_code: Mapped[int] = mapped_column(sa.SmallInteger)
    latency_ms: Mapped[float | None] = mapped_column(sa.Float)
    outcome: Mapped[str] = mapped_column(sa.String(20))
    # As given to verification (``client_ip``, ``user_agent``); NULL when the caller did not say.
    client_ip: Mapped[str | None] = mapped_column(INET)
    user_agent: Mapped[str | None] = mapped_column(sa.String(256))


class InvalidKeyCount(Model):
    """Calls with a malformed or unknown key (or refused for too many), per UTC minute, client address and
    outcome: bounded per address, where one row per call would let any client grow the usage table at will."""

    __tablename__ = "api_invalid_key_counts"
    __table_args__ = (
        check_in("outcome", INVALID_KEY_OUTCOMES, "ck_api_invalid_key_counts_outcome"),
        # The upsert's arbiter; an unknown address (NULL) is one address, not a new row per flush.
        sa.Index(
            "ux_api_invalid_key_counts",
            "minute",
            "client_ip",
            "outcome",
            unique=True,
            postgresql_nulls_not_distinct=True,
        ),
    )

    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    minute: Mapped[datetime] = mapped_column(Timestamp)
    client_ip: Mapped[str | None] = mapped_column(INET)
    outcome: Mapped[str] = mapped_column(sa.String(30))
    calls: Mapped[int] = mapped_column(sa.BigInteger)


class RateLimitTracking(Model):
    """A counter per bucket per window (``org:<id>`` for the API, ``login:…`` for sign-in failures)."""

    __tablename__ = "rate_limit_tracking"
    __table_args__ = (sa.Index("ix_rate_limit_tracking_window_start", "window_start"),)

    bucket: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    window_start: Mapped[datetime] = mapped_column(Timestamp, primary_key=True)
    organization_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), sa.ForeignKey("organizations.id", ondelete="CASCADE")
    )
    count: Mapped[int] = mapped_column(sa.Integer, server_default="0")


class UsageSpillReplay(Model):
    """A spill file whose rows were written (portal/verification/spill.py): recorded in the same transaction as
    its rows, so no file is ever written twice, even by two replayers at once or after a crash before its removal."""

    __tablename__ = "usage_spill_replays"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    replayed_at: Mapped[datetime] = mapped_column(Timestamp, server_default=sa.func.now())
    usage_rows: Mapped[int] = mapped_column(sa.Integer)
    invalid_key_calls: Mapped[int] = mapped_column(sa.BigInteger)
