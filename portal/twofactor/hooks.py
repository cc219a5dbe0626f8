"""The two calls two-factor makes into the account's security features, kept in one place."""

from __future__ import annotations

from typing import Any

from portal.account import security_log, sessions
from portal.auth import tokens
from portal.models import User
from portal.timeutil import utcnow

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


def end_other_sessions(user: User, keep: Any = None, reason: str = "") -> int:
    """Sign the account out everywhere but in the session making the change; how many sessions ended."""
    return sessions.end_other_sessions(user, keep or getattr(user, "current_session", None), reason or "twofactor")


def mark_second_factor_done(user: User) -> None:
    """The session making the change just proved a second factor (enrolment checked one): mark it (no commit)."""
    row = getattr(user, "current_session", None)
    if row is not None and row.second_factor_done_at is None:
        row.second_factor_done_at = utcnow()


def session_has_second_factor(user: User) -> bool:
    """Whether the session this request runs under completed a second factor (sign-in step or enrolment)."""
    row = getattr(user, "current_session", None)
    return row is not None and row.second_factor_done_at is not None


def sign_out_this_session(user: User, *, ip: str | None, user_agent: str | None) -> None:
    """End the session this request runs under, and commit (it must sign in again)."""
    sessions.sign_out(user, ip=ip, user_agent=user_agent)


def discard_account_links(user: User) -> None:
    """Every pending one-time link of the account stops working (no commit)."""
    tokens.discard(user.id)
