"""The mail outbox: each row is one rendered message, written in the transaction of the change that causes it."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from portal.extensions import Model
from portal.models._types import Timestamp, created_at, uuid_pk


class OutboxMail(Model):
    """A mail to deliver: pending until ``sent_at`` is set, or ``failed_at`` once the sender gives up.

    Bodies are stored as rendered while the mail is pending; they may hold one-time links, so the sender clears
    them (``body_text`` empty, ``body_html`` NULL) once the mail is sent or given up, keeping the subject and
    metadata. Staff pages show only the metadata; ``flask mail prune`` deletes sent rows after 30 days.
    """

    __tablename__ = "mail_outbox"
    __table_args__ = (
        # The sender's pick: unsent, not given up, oldest due first.
        sa.Index(
            "ix_mail_outbox_due",
            "next_attempt_at",
            postgresql_where=sa.text("sent_at IS NULL AND failed_at IS NULL"),
        ),
        sa.CheckConstraint("attempts >= 0", name="ck_mail_outbox_attempts"),
    )

    id: Mapped[uuid_pk]
    to_address: Mapped[str] = mapped_column(sa.String(254))
    subject: Mapped[str] = mapped_column(sa.String(200))
    body_text: Mapped[str] = mapped_column(sa.Text)
    body_html: Mapped[str | None] = mapped_column(sa.Text)
    template: Mapped[str] = mapped_column(sa.String(100))
    created_at: Mapped[created_at]
    next_attempt_at: Mapped[datetime] = mapped_column(Timestamp, server_default=sa.func.now())
    attempts: Mapped[int] = mapped_column(sa.SmallInteger, server_default=sa.text("0"))
    # The SMTP server's answer or the connection error, never a credential.
    last_error: Mapped[str | None] = mapped_column(sa.String(500))
    sent_at: Mapped[datetime | None] = mapped_column(Timestamp)
    failed_at: Mapped[datetime | None] = mapped_column(Timestamp)

    @property
    def status(self) -> str:
        """``sent``, ``failed`` (given up) or ``pending``."""
        if self.sent_at is not None:
            return "sent"
        return "failed" if self.failed_at is not None else "pending"
