"""People who sign in to the portal."""

from __future__ import annotations

import secrets
import uuid
from datetime import datetime
from typing import TYPE_CHECKING

import sqlalchemy as sa
from flask_login import UserMixin
from sqlalchemy.orm import Mapped, mapped_column, relationship

from portal.extensions import Model
from portal.models._types import Timestamp, created_at, uuid_pk

if TYPE_CHECKING:
    from portal.models.organization import Membership


def new_session_token() -> str:
    return secrets.token_urlsafe(16)


class User(UserMixin, Model):
    __tablename__ = "users"
    __table_args__ = (sa.Index("uq_users_email_lower", sa.func.lower(sa.text("email")), unique=True),)

    id: Mapped[uuid_pk]
    email: Mapped[str] = mapped_column(sa.String(254))
    display_name: Mapped[str] = mapped_column(sa.String(100))
    password_hash: Mapped[str] = mapped_column(sa.String(255))
    is_staff: Mapped[bool] = mapped_column(server_default=sa.false())
    is_active: Mapped[bool] = mapped_column(server_default=sa.true())  # type: ignore[assignment]
    # Rotated on password change so every other signed-in session and remember-me cookie stops working.
    session_token: Mapped[str] = mapped_column(sa.String(32), default=new_session_token)
    created_at: Mapped[created_at]
    last_login_at: Mapped[datetime | None] = mapped_column(Timestamp)
    # Set when the owner of the address followed a link mailed to it; cleared never, replaced on a change.
    email_verified_at: Mapped[datetime | None] = mapped_column(Timestamp)

    memberships: Mapped[list[Membership]] = relationship(
        back_populates="user", cascade="all, delete-orphan", passive_deletes=True
    )

    @property
    def is_verified(self) -> bool:
        return self.email_verified_at is not None

    def get_id(self) -> str:
        return f"{self.id}:{self.session_token}"

    @staticmethod
    def parse_login_id(login_id: str) -> tuple[uuid.UUID, str] | None:
        user_id, _, token = login_id.partition(":")
        try:
            return uuid.UUID(user_id), token
        except ValueError:
            return None
