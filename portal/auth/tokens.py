"""One-time account links (``account_tokens``): issued with a lifetime, stored as a SHA-256, used once."""

from __future__ import annotations

import uuid
from datetime import timedelta

import sqlalchemy as sa

from portal.extensions import db
from portal.models import AccountToken, User
from portal.security import new_token, token_digest
from portal.timeutil import utcnow

VERIFY_EMAIL = "verify_email"
RESET_PASSWORD = "reset_password"  # noqa: S105 - a purpose name, not a secret
CHANGE_EMAIL = "change_email"


def issue(user: User, purpose: str, ttl: timedelta, *, new_email: str | None = None, replace: bool = False) -> str:
    """A new link token for ``user``; with ``replace`` the account's earlier unused links of this kind stop
    working, so only the newest reset or change link is live. The caller commits (with the mail)."""
    if replace:
        discard(user.id, purpose)
    token = new_token()
    moment = utcnow()
    db.session.add(
        AccountToken(
            user_id=user.id,
            purpose=purpose,
            token_hash=token_digest(token),
            new_email=new_email,
            created_at=moment,
            expires_at=moment + ttl,
        )
    )
    return token


def discard(user_id: uuid.UUID, *purposes: str) -> None:
    """The account's unused links of these kinds (all kinds when none is named) stop working."""
    query = sa.delete(AccountToken).where(AccountToken.user_id == user_id, AccountToken.used_at.is_(None))
    if purposes:
        query = query.where(AccountToken.purpose.in_(purposes))
    db.session.execute(query)


def find(token: str, purpose: str, *, for_update: bool = False) -> AccountToken | None:
    """The usable (unused, unexpired) link for ``token``, else None. Looked up by digest only."""
    if not 20 <= len(token) <= 128:
        return None
    query = sa.select(AccountToken).where(
        AccountToken.token_hash == token_digest(token),
        AccountToken.purpose == purpose,
        AccountToken.used_at.is_(None),
        AccountToken.expires_at > utcnow(),
    )
    if for_update:
        query = query.with_for_update().execution_options(populate_existing=True)
    return db.session.scalar(query)


def use(token: str, purpose: str) -> AccountToken | None:
    """Mark the link used, under a row lock so two clicks cannot both use it; None when it is not usable."""
    row = find(token, purpose, for_update=True)
    if row is not None:
        row.used_at = utcnow()
    return row
