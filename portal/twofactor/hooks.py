"""The two calls two-factor makes into the account's security features, kept in one place.

The account's security log and its session list live with the account pages; until they are wired in, these
adapters do what the portal can do today: nothing for the log (the audit trail is for organizations), and
rotating ``User.session_token`` to sign out every other session (the caller re-issues its own, as a password
change does).
"""

from __future__ import annotations

from typing import Any

from portal.models import User
from portal.models.user import new_session_token


def record_security_event(user: User, event: str, *, ip: str | None, user_agent: str | None, **detail: Any) -> None:
    """Note a change to the account's sign-in security (``two_factor.enabled``, ``passkey.added`` …)."""
    return None


def end_other_sessions(user: User, keep: Any = None, reason: str = "") -> None:
    """Sign out the account everywhere but here; ``keep`` names this session once sessions are rows."""
    user.session_token = new_session_token()
