"""Second factors of an account: an authenticator app (TOTP), passkeys (WebAuthn) and recovery codes.

An account has two-factor on when it has a TOTP credential or at least one passkey.
"""

from __future__ import annotations

import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from portal.extensions import Model
from portal.models._types import Timestamp, created_at, uuid_pk


def _user_fk() -> sa.ForeignKey:
    return sa.ForeignKey("users.id", ondelete="CASCADE")


class TotpCredential(Model):
    """An enrolled authenticator app. The shared secret is encrypted (portal/twofactor/sealing.py), never plain."""

    __tablename__ = "totp_credentials"

    user_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), _user_fk(), primary_key=True)
    secret_sealed: Mapped[bytes] = mapped_column(sa.LargeBinary)
    # The last RFC 6238 time step accepted: a code of this step or an earlier one is refused, so none is reused.
    last_used_step: Mapped[int | None] = mapped_column(sa.BigInteger)
    created_at: Mapped[created_at]


class RecoveryCode(Model):
    """A single-use recovery code: only its SHA-256 is stored (each code carries about 60 random bits)."""

    __tablename__ = "recovery_codes"
    __table_args__ = (sa.UniqueConstraint("user_id", "code_hash", name="uq_recovery_codes_user_hash"),)

    id: Mapped[uuid_pk]
    user_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), _user_fk())
    code_hash: Mapped[bytes] = mapped_column(sa.LargeBinary(32))
    created_at: Mapped[created_at]
    used_at: Mapped[datetime | None] = mapped_column(Timestamp)


class Passkey(Model):
    """A WebAuthn credential registered as a second factor."""

    __tablename__ = "passkeys"
    __table_args__ = (sa.Index("ix_passkeys_user_id", "user_id"),)

    id: Mapped[uuid_pk]
    user_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), _user_fk())
    name: Mapped[str] = mapped_column(sa.String(60))
    credential_id: Mapped[bytes] = mapped_column(sa.LargeBinary, unique=True)
    public_key: Mapped[bytes] = mapped_column(sa.LargeBinary)
    sign_count: Mapped[int] = mapped_column(sa.BigInteger, server_default=sa.text("0"))
    transports: Mapped[list[str]] = mapped_column(JSONB, server_default=sa.text("'[]'::jsonb"))
    created_at: Mapped[created_at]
    last_used_at: Mapped[datetime | None] = mapped_column(Timestamp)


class SpentPasskeyChallenge(Model):
    """A passkey challenge that was answered, by its SHA-256: each challenge is accepted once, even when a copy
    of the session cookie that carried it is sent again. Rows go once the challenge would have expired anyway."""

    __tablename__ = "spent_passkey_challenges"

    challenge_hash: Mapped[bytes] = mapped_column(sa.LargeBinary(32), primary_key=True)
    spent_at: Mapped[datetime] = mapped_column(Timestamp, server_default=sa.func.now())
