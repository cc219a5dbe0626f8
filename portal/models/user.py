"""People who sign in to the portal."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING

import sqlalchemy as sa
from flask_login import UserMixin
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Mapped, mapped_column, relationship

from portal.extensions import Model
from portal.models._types import Timestamp, created_at, uuid_pk

if TYPE_CHECKING:
    from portal.models.organization import Membership
    from portal.models.session import UserSession

LOGIN_ID_PREFIX = "s:"


class User(UserMixin, Model):
    __tablename__ = "users"
    __table_args__ = (sa.Index("uq_users_email_lower", sa.func.lower(sa.text("email")), unique=True),)

    id: Mapped[uuid_pk]
    email: Mapped[str] = mapped_column(sa.String(254))
    display_name: Mapped[str] = mapped_column(sa.String(100))
    password_hash: Mapped[str] = mapped_column(sa.String(255))
    is_staff: Mapped[bool] = mapped_column(server_default=sa.false())
    is_active: Mapped[bool] = mapped_column(server_default=sa.true())  # type: ignore[assignment]
    created_at: Mapped[created_at]
    last_login_at: Mapped[datetime | None] = mapped_column(Timestamp)
    # Set when the owner of the address followed a link mailed to it; cleared never, replaced on a change.
    email_verified_at: Mapped[datetime | None] = mapped_column(Timestamp)
    # The organization this member used last, so signing in again lands there (a session does not survive).
    last_organization_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), sa.ForeignKey("organizations.id", ondelete="SET NULL")
    )

    memberships: Mapped[list[Membership]] = relationship(
        back_populates="user", cascade="all, delete-orphan", passive_deletes=True
    )

    # Not columns: the signed-in session this request runs under, and its secret while it is being opened.
    # Set by portal.account.sessions (open_session and the Flask-Login loader), never stored.
    if TYPE_CHECKING:
        current_session: UserSession | None
        session_secret: str | None
    else:  # plain class attributes, which the declarative mapping leaves alone
        current_session = None
        session_secret = None

    @property
    def is_verified(self) -> bool:
        return self.email_verified_at is not None

    def get_id(self) -> str:
        """What Flask-Login keeps in the session cookie and the remember-me cookie: the session's secret, not the
        user's id, so revoking that one session row ends both cookies (portal.account.sessions)."""
        if not self.session_secret:
            raise RuntimeError("open a session with portal.account.sessions.open_session() before login_user()")
        return LOGIN_ID_PREFIX + self.session_secret
