"""Accounts: sign-up, sign-in with throttling, password changes."""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
from flask import current_app
from sqlalchemy.exc import IntegrityError

from portal import audit, ratelimit
from portal.account import security_log
from portal.account.sessions import end_other_sessions
from portal.extensions import db
from portal.models import Organization, User, UserSession
from portal.orgs.services import create_organization
from portal.security import burn_password_check, hash_password, password_needs_rehash, verify_password
from portal.timeutil import utcnow


class AuthError(Exception):
    """A sign-in that did not succeed; the message is safe to show (it never says whether the email exists)."""


class Throttled(AuthError):
    pass


class EmailTaken(Exception):
    pass


def normalize_email(email: str) -> str:
    return email.strip().lower()


def find_user_by_email(email: str) -> User | None:
    return db.session.scalar(sa.select(User).where(sa.func.lower(User.email) == normalize_email(email)))


def create_user(email: str, display_name: str, password: str, *, is_staff: bool = False) -> User:
    if find_user_by_email(email) is not None:
        raise EmailTaken(email)
    user = User(
        email=normalize_email(email),
        display_name=display_name.strip(),
        password_hash=hash_password(password),
        is_staff=is_staff,
    )
    try:
        with db.session.begin_nested():  # the unique index decides when two sign-ups race
            db.session.add(user)
    except IntegrityError:
        raise EmailTaken(email) from None
    return user


def sign_up(email: str, display_name: str, password: str, *, ip: str | None = None) -> tuple[User, Organization]:
    """A new account with a personal organization on the free plan, owned by its creator."""
    user = create_user(email, display_name, password)
    org = create_organization(f"{user.display_name}'s organization", user, ip=ip)
    db.session.commit()
    return user, org


def _throttle_buckets(email: str, ip: str | None) -> list[tuple[str, int]]:
    """Failure counters: per account from one address (tight), per account overall (loose, so a stranger
    cannot lock the owner out with a handful of tries), and per address across accounts."""
    cfg = current_app.config
    account = hashlib.sha256(normalize_email(email).encode()).hexdigest()[:32]
    buckets = [(f"login:acct:{account}", cfg["LOGIN_MAX_FAILURES_PER_ACCOUNT_TOTAL"])]
    if ip:
        buckets.append((f"login:acct-ip:{account}:{ip}", cfg["LOGIN_MAX_FAILURES_PER_ACCOUNT"]))
        buckets.append((f"login:ip:{ip}", cfg["LOGIN_MAX_FAILURES_PER_IP"]))
    return buckets


def authenticate(email: str, password: str, ip: str | None, user_agent: str | None = None) -> User:
    """The user for these credentials, or ``AuthError``. Failures count per account and per address.

    A failure against an existing account goes to that account's security log, for its owner to see; the
    answer is the same as for an unknown email. A throttled attempt is not logged (no password was checked,
    and an attacker could fill the log with them).

    Each attempt is counted (and committed) before the password is checked, and given back if it succeeds:
    with a gevent worker holding hundreds of connections, checking the counters first and counting the
    failure after the ≈ 100 ms hash would let every attempt that arrived meanwhile through.
    """
    window = current_app.config["LOGIN_THROTTLE_WINDOW"]
    taken = [(bucket, limit, *ratelimit.take(bucket, window)) for bucket, limit in _throttle_buckets(email, ip)]
    db.session.commit()
    if any(count > limit for _, limit, count, _ in taken):
        raise Throttled("Too many failed sign-in attempts. Wait a few minutes and try again.")

    user = find_user_by_email(email)
    if user is None:
        burn_password_check(password)
    if user is None or not verify_password(user.password_hash, password) or not user.is_active:
        if user is not None:
            reason = "wrong password" if user.is_active else "account deactivated"
            security_log.record(user, "signin.failure", ip=ip, user_agent=user_agent, reason=reason)
            db.session.commit()
        raise AuthError("Invalid email or password.")  # the attempt stays counted: a failure

    for bucket, _, _, window_start in taken:
        ratelimit.give_back(bucket, window_start)

    if password_needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    user.last_login_at = utcnow()
    db.session.commit()
    return user


def change_password(
    user: User,
    current_password: str,
    new_password: str,
    *,
    ip: str | None = None,
    user_agent: str | None = None,
    keep: UserSession | None = None,
) -> bool:
    """Change the password and end every session but ``keep`` (the one the member is using)."""
    if not verify_password(user.password_hash, current_password):
        return False
    user.password_hash = hash_password(new_password)
    ended = end_other_sessions(user, keep, "password.changed")
    audit.record(
        "user.password_changed", organization_id=None, actor=user, target_type="user", target_id=user.id, ip=ip
    )
    security_log.record(user, "password.changed", ip=ip, user_agent=user_agent, sessions_ended=ended)
    db.session.commit()
    return True
