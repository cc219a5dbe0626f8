"""Verified addresses: the verification link, its throttled resend, and moving an account to a new address.

An address counts as verified once a link mailed to it was followed. A change of address takes effect only
when the link mailed to the new address is followed; the old address is then told. Every link is one row of
``account_tokens`` (portal/auth/tokens.py).
"""

from __future__ import annotations

from flask import current_app
from sqlalchemy.exc import IntegrityError

from portal import identity, mail
from portal.account import security_log
from portal.auth import tokens
from portal.auth.services import (
    Throttled,
    check_current_password,
    find_user_by_email,
    send_verification,
    take_or_refuse,
)
from portal.extensions import db
from portal.models import User
from portal.timeutil import utcnow


class AddressError(Exception):
    """A change of address that cannot be made; the message is shown on the form."""


def resend_verification(user: User) -> None:
    """Another verification mail, at most ``VERIFY_RESEND_MAX`` per ``VERIFY_RESEND_WINDOW`` per account."""
    if user.is_verified:
        return
    cfg = current_app.config
    bucket = [(f"verify-resend:{user.id}", cfg["VERIFY_RESEND_MAX"])]
    if take_or_refuse(bucket, cfg["VERIFY_RESEND_WINDOW"]) is None:
        raise Throttled("We already sent several links this hour. Check your spam folder, or try again later.")
    send_verification(user)
    db.session.commit()


def verify_email(token: str, *, ip: str | None) -> User | None:
    """Mark the address verified by following its link; None when the link is unknown, used or expired."""
    row = tokens.use(token, tokens.VERIFY_EMAIL)
    if row is None:
        db.session.rollback()
        return None
    user = row.user
    if user.email_verified_at is None:
        user.email_verified_at = utcnow()
        security_log.record(user, "email.verified", ip=ip, user_agent=None, email=user.email)
    db.session.commit()
    return user


def request_email_change(user: User, new_email: str, password: str, *, ip: str | None) -> None:
    """Mail a confirmation link to ``new_email``; nothing changes until it is followed.

    The answer is the same whether or not the address already has an account (its owner gets a mail saying
    so instead), so this form cannot be used to find out who has an account.
    """
    new_email = identity.normalize_email(new_email)
    reason = identity.problem(new_email)
    if reason:
        raise AddressError(reason)
    if new_email == user.email:
        raise AddressError("That is already your address.")
    if not check_current_password(user, password, ip=ip):
        raise AddressError("That is not your password.")
    taken = find_user_by_email(new_email)
    if taken is not None:
        mail.enqueue(new_email, "email_in_use", name=taken.display_name)
    else:
        ttl = current_app.config["CHANGE_EMAIL_TTL"]
        token = tokens.issue(user, tokens.CHANGE_EMAIL, ttl, new_email=new_email, replace=True)
        mail.enqueue(new_email, "change_email", name=user.display_name, token=token, old_email=user.email)
    db.session.commit()


def confirm_email_change(token: str, *, ip: str | None) -> User | None:
    """Move the account to the address the link was mailed to, and tell the old address.

    Raises ``AddressError`` when another account took the address meanwhile; None for an unusable link.
    """
    row = tokens.use(token, tokens.CHANGE_EMAIL)
    if row is None or row.new_email is None:
        db.session.rollback()
        return None
    user, old_email, new_email = row.user, row.user.email, row.new_email
    if find_user_by_email(new_email) is not None:
        db.session.rollback()
        raise AddressError("Another account uses that address now, so yours was not changed.")
    user.email = new_email
    user.email_verified_at = utcnow()
    tokens.discard(user.id)  # links mailed to the old address (a reset, say) stop working
    security_log.record(user, "email.changed", ip=ip, user_agent=None, old_email=old_email, new_email=new_email)
    mail.enqueue(old_email, "email_changed", name=user.display_name, new_email=new_email)
    try:
        db.session.commit()
    except IntegrityError:  # the unique index decides a race with a sign-up
        db.session.rollback()
        raise AddressError("Another account uses that address now, so yours was not changed.") from None
    return user
