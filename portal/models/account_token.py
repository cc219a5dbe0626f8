"""One-time links sent by mail: verify an address, reset a password, move an account to a new address."""

from __future__ import annotations

import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Mapped, mapped_column, relationship

from portal.extensions import Model
from portal.models._types import Timestamp, check_in, created_at, uuid_pk
from portal.models.user import User

PURPOSES: tuple[str, ...] = ("verify_email", "reset_password", "change_email")


class AccountToken(Model):
    """A link's token is mailed once; only its SHA-256 is stored, so the table alone opens nothing."""

    __tablename__ = "account_tokens"
    __table_args__ = (
        check_in("purpose", PURPOSES, "ck_account_tokens_purpose"),
        sa.Index("ix_account_tokens_user_purpose", "user_id", "purpose"),
    )

    id: Mapped[uuid_pk]
    user_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), sa.ForeignKey("users.id", ondelete="CASCADE"))
    purpose: Mapped[str] = mapped_column(sa.String(20))
    token_hash: Mapped[bytes] = mapped_column(sa.LargeBinary(32), unique=True)
    new_email: Mapped[str | None] = mapped_column(sa.String(254))  # change_email: the address being moved to
    created_at: Mapped[created_at]
    expires_at: Mapped[datetime] = mapped_column(Timestamp)
    used_at: Mapped[datetime | None] = mapped_column(Timestamp)

    user: Mapped[User] = relationship()
