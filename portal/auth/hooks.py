"""The account features this package calls but does not own: the security log and server-side sessions.

One place to switch them in: until they exist, the security log is a no-op and ending every session rotates
``User.session_token``, which signs out every session and remember-me cookie of the account.
"""

from __future__ import annotations

from typing import Any

from portal.models import User
from portal.models.user import new_session_token


def record_security_event(
    user: User, event: str, *, ip: str | None, user_agent: str | None = None, **detail: Any
) -> None:
    """An entry in the member's own security log (sign-ins, password and address changes)."""


def end_all_sessions(user: User) -> None:
    """Sign the account out everywhere; the caller commits."""
    user.session_token = new_session_token()
