"""The account features sign-in, reset and address changes call: the security log and server-side sessions."""

from __future__ import annotations

from typing import Any

from portal.account import security_log, sessions
from portal.models import User


def record_security_event(
    user: User, event: str, *, ip: str | None, user_agent: str | None = None, **detail: Any
) -> None:
    """An entry in the member's own security log (same transaction, no commit)."""
    security_log.record(user, event, ip=ip, user_agent=user_agent, **detail)


def end_all_sessions(user: User) -> None:
    """Sign the account out everywhere, remember-me cookies included; the caller commits."""
    sessions.end_all_sessions(user, "password.reset")
