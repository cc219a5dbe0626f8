"""The two calls two-factor makes into the account's security features, kept in one place."""

from __future__ import annotations

from typing import Any

from portal.account import security_log, sessions
from portal.models import User

# Two-factor's own event names, as the account's security log words them.
_EVENTS = {
    "two_factor.enabled": "twofactor.enabled",
    "two_factor.disabled": "twofactor.disabled",
    "two_factor.failure": "twofactor.failure",
    "two_factor.recovery_codes_regenerated": "recovery_codes.regenerated",
}


def record_security_event(user: User, event: str, *, ip: str | None, user_agent: str | None, **detail: Any) -> None:
    """Note a change to the account's sign-in security in its security log (same transaction, no commit)."""
    if event == "two_factor.sign_in":
        if detail.get("via") != "recovery_code":
            return  # the sign-in itself is logged when its session opens
        event, detail = "recovery_code.used", {}
    security_log.record(user, _EVENTS.get(event, event), ip=ip, user_agent=user_agent, **detail)


def end_other_sessions(user: User, keep: Any = None, reason: str = "") -> None:
    """Sign the account out everywhere but in the session making the change."""
    sessions.end_other_sessions(user, keep or getattr(user, "current_session", None), reason or "twofactor")
