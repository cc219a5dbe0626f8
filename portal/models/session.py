"""Signed-in sessions, held on the server, and each account's security log."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import INET, JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from portal.extensions import Model
from portal.models._types import Timestamp, created_at, uuid_pk

USER_AGENT_MAX = 512


class UserSession(Model):
    """One sign-in on one browser. The browser holds a random secret; only its SHA-256 is stored here.

    A session is usable until it is revoked, passes ``expires_at`` (fixed at sign-in) or sits idle longer than
    its idle timeout (from the config, by ``remember``); see ``portal.account.sessions``.
    """

    __tablename__ = "user_sessions"
    __table_args__ = (sa.Index("ix_user_sessions_user_id", "user_id"),)

    id: Mapped[uuid_pk]
    user_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), sa.ForeignKey("users.id", ondelete="CASCADE"))
    token_hash: Mapped[bytes] = mapped_column(sa.LargeBinary(32), unique=True)
    remember: Mapped[bool] = mapped_column(server_default=sa.false())
    created_at: Mapped[created_at]
    last_seen_at: Mapped[datetime] = mapped_column(Timestamp, server_default=sa.func.now())
    expires_at: Mapped[datetime] = mapped_column(Timestamp)
    user_agent: Mapped[str | None] = mapped_column(sa.String(USER_AGENT_MAX))
    ip: Mapped[str | None] = mapped_column(INET)
    # Set by two-factor sign-in once the second factor is checked; NULL for a password-only sign-in.
    second_factor_done_at: Mapped[datetime | None] = mapped_column(Timestamp)
    revoked_at: Mapped[datetime | None] = mapped_column(Timestamp)
    # Why it ended: "signout", "revoked", "password.changed", … (never a secret).
    revoked_reason: Mapped[str | None] = mapped_column(sa.String(50))


class SecurityEvent(Model):
    """One entry of an account's security log, shown to that account alone."""

    __tablename__ = "security_events"
    __table_args__ = (sa.Index("ix_security_events_user_occurred", "user_id", sa.text("occurred_at DESC")),)

    id: Mapped[uuid_pk]
    user_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), sa.ForeignKey("users.id", ondelete="CASCADE"))
    occurred_at: Mapped[datetime] = mapped_column(Timestamp, server_default=sa.func.now())
    event: Mapped[str] = mapped_column(sa.String(50))
    ip: Mapped[str | None] = mapped_column(INET)
    user_agent: Mapped[str | None] = mapped_column(sa.String(USER_AGENT_MAX))
    detail: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=sa.text("'{}'::jsonb"))
