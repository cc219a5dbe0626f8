"""Each account's security log: sign-ins, sessions ended, password and two-factor changes.

Only the account's owner sees it (``/account/security``). Write to it with :func:`record`, in the same
transaction as the change it describes.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import sqlalchemy as sa

from portal.db import count_rows
from portal.extensions import db
from portal.models import SecurityEvent, User
from portal.models.session import USER_AGENT_MAX
from portal.pagination import Page, paginate
from portal.timeutil import utcnow

# The events the portal writes, with how the log page words them. Another name may be recorded (the page then
# shows the name itself), but add it here so the owner reads a sentence.
EVENTS: dict[str, str] = {
    "signin.success": "Signed in",
    "signin.failure": "Failed sign-in attempt",
    "signout": "Signed out",
    "session.revoked": "Signed out a session",
    "sessions.revoked_others": "Signed out all other sessions",
    "sessions.revoked_all": "All sessions were signed out",
    "password.changed": "Changed password",
    "password.reset": "Reset password",
    "email.changed": "Changed email address",
    "email.verified": "Verified email address",
    "password.reset_sent_by_support": "Support sent a password reset link",
    "twofactor.enabled": "Turned on two-factor authentication",
    "twofactor.disabled": "Turned off two-factor authentication",
    "twofactor.failure": "Failed two-factor check",
    "recovery_code.used": "Used a recovery code",
    "recovery_codes.regenerated": "Generated new recovery codes",
    "totp.added": "Added an authenticator app",
    "totp.removed": "Removed the authenticator app",
    "passkey.added": "Added a passkey",
    "passkey.removed": "Removed a passkey",
}

# Detail keys that could only hold a secret. ``record`` refuses them, so a slip fails in tests, not in the log.
_SECRET_WORDS = ("password", "secret", "token", "otp", "code")


class SecretInDetail(ValueError):
    """A detail key that names a secret; the security log never holds one."""


def record(
    user: User, event: str, *, ip: str | None, user_agent: str | None, **detail: str | int | bool | None
) -> SecurityEvent:
    """Add ``event`` to ``user``'s security log in the current transaction (no commit).

    ``event`` is a dotted name from :data:`EVENTS` (``"password.reset"``, ``"twofactor.enabled"`` …). ``ip``
    and ``user_agent`` are the client's, as the route read them (``request.remote_addr``,
    ``request.user_agent.string``), or ``None`` outside a request. ``detail`` is shown to the owner as
    "key: value" pairs, e.g. ``record(user, "password.changed", ip=…, user_agent=…, sessions_ended=2)``;
    it must never carry a secret, and a key naming one (password, token, code …) raises ``SecretInDetail``.
    """
    for key in detail:
        if any(word in key.lower() for word in _SECRET_WORDS):
            raise SecretInDetail(f"security log detail {key!r} looks like a secret")
    row = SecurityEvent(
        user_id=user.id,
        occurred_at=utcnow(),
        event=event,
        ip=clean_ip(ip),
        user_agent=clip_user_agent(user_agent),
        detail={key: value for key, value in detail.items() if value is not None},
    )
    db.session.add(row)
    return row


def events_for(user: User, *, page: int = 1, per_page: int = 50) -> Page[SecurityEvent]:
    """``user``'s own events, newest first."""
    query = sa.select(SecurityEvent).where(SecurityEvent.user_id == user.id)
    ordered = query.order_by(SecurityEvent.occurred_at.desc(), SecurityEvent.id)
    return paginate(
        lambda limit, offset: db.session.scalars(ordered.limit(limit).offset(offset)).all(),
        page=page,
        per_page=per_page,
        total=count_rows(query),
    )


def label(event: str) -> str:
    return EVENTS.get(event, event)


def clean_ip(ip: str | None) -> str | None:
    """An address PostgreSQL's ``inet`` accepts, or ``None``: a mangled forwarded address never fails a sign-in."""
    if not ip:
        return None
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        return None


def clip_user_agent(user_agent: str | None) -> str | None:
    return user_agent[:USER_AGENT_MAX] if user_agent else None


def describe_detail(detail: dict[str, Any]) -> list[tuple[str, str]]:
    """``detail`` as (label, value) pairs for the log page."""
    return [(key.replace("_", " ").capitalize(), _show(value)) for key, value in sorted(detail.items())]


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)
