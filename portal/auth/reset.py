"""Password reset by a link mailed to the account's address (``PASSWORD_RESET_TTL``, one hour, single use).

Asking for a link answers the same, in about the same time, whether or not the address has an account, and
is throttled per address and per client address; a throttled request gets the same answer and sends nothing.
Using the link sets the new password (same policy as sign-up), ends every session and every other pending
link of the account (an address change someone else asked for, say), marks the address verified (the link
proved it), and is announced by mail.
"""

from __future__ import annotations

import uuid

from flask import current_app

from portal import audit, mail
from portal.account import security_log, sessions
from portal.auth import tokens
from portal.auth.services import account_key, check_password_policy, find_user_by_email, take_or_refuse
from portal.extensions import db
from portal.models import AccountToken, Organization, User
from portal.security import hash_password, new_token
from portal.timeutil import utcnow

SUPPORT_LABEL = "ProCode support"


def request_password_reset(email: str, *, ip: str | None) -> None:
    """Mail a reset link if ``email`` belongs to an active account; otherwise do the same work, send nothing."""
    cfg = current_app.config
    buckets = [(f"reset:addr:{account_key(email)}", cfg["PASSWORD_RESET_MAX_PER_EMAIL"])]
    if ip:
        buckets.append((f"reset:ip:{ip}", cfg["PASSWORD_RESET_MAX_PER_IP"]))
    if take_or_refuse(buckets, cfg["PASSWORD_RESET_WINDOW"]) is None:
        return
    user = find_user_by_email(email)
    if user is not None and user.is_active:
        _send_link(user, by_support=False)
    else:
        # The same statements and rendering a real link costs, for an account that does not exist.
        tokens.discard(uuid.uuid4(), tokens.RESET_PASSWORD)
        mail.render("password_reset", name="", token=new_token(), by_support=False)
    db.session.commit()


def _send_link(user: User, *, by_support: bool) -> None:
    token = tokens.issue(user, tokens.RESET_PASSWORD, current_app.config["PASSWORD_RESET_TTL"], replace=True)
    mail.enqueue(user.email, "password_reset", name=user.display_name, token=token, by_support=by_support)


def send_reset_by_staff(user: User, org: Organization, *, actor: User, ip: str | None) -> None:
    """Support sends a member a reset link (never sees or sets the password); recorded in the audit trail of
    the organization it was sent from, which is where staff and the organization's admins look."""
    _send_link(user, by_support=True)
    audit.record(
        "user.password_reset_sent",
        organization_id=org.id,
        actor=actor,
        actor_label=SUPPORT_LABEL,
        target_type="user",
        target_id=user.id,
        details={"email": user.email, "name": user.display_name},
        ip=ip,
    )
    security_log.record(user, "password.reset_sent_by_support", ip=ip, user_agent=None)
    db.session.commit()


def usable_link(token: str) -> AccountToken | None:
    return tokens.find(token, tokens.RESET_PASSWORD)


def reset_password(token: str, new_password: str, *, ip: str | None, user_agent: str | None = None) -> User | None:
    """Set the password through a reset link; None when the link is unknown, used or expired.

    Raises ``WeakPassword`` (and keeps the link usable) when the policy refuses the new password.
    """
    row = usable_link(token)
    if row is None:
        return None
    check_password_policy(new_password, email=row.user.email, name=row.user.display_name)
    row = tokens.use(token, tokens.RESET_PASSWORD)
    if row is None:  # used by another request meanwhile
        db.session.rollback()
        return None
    user = row.user
    user.password_hash = hash_password(new_password)
    sessions.end_all_sessions(user, "password.reset")
    if user.email_verified_at is None:
        user.email_verified_at = utcnow()  # only the address's owner could follow the link
    tokens.discard(user.id)  # every pending link (an address change, say) dies with the old password
    audit.record("user.password_reset", organization_id=None, actor=user, target_type="user", target_id=user.id, ip=ip)
    security_log.record(user, "password.reset", ip=ip, user_agent=user_agent)
    mail.enqueue(user.email, "password_changed", name=user.display_name)
    db.session.commit()
    return user
