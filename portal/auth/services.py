"""Accounts: sign-up, sign-in with throttling, password changes.

Sign-in throttling counts failed attempts in three fixed windows (``LOGIN_THROTTLE_WINDOW``, 15 minutes):

- per account and client address (``LOGIN_MAX_FAILURES_PER_ACCOUNT``, 5): one address guessing one account
  is stopped quickly, and only that address;
- per client address across accounts (``LOGIN_MAX_FAILURES_PER_IP``, 20): one address spraying many accounts;
- per account from everywhere (``LOGIN_MAX_FAILURES_PER_ACCOUNT_TOTAL``, 50): many addresses guessing one
  account. A device that signed in to the account before (a signed, long-lived "known device" cookie) is not
  held by this bucket, so a distributed guesser cannot lock the owner out of their own account.

An attempt that is refused because a bucket is full does not count again, so an attacker who keeps trying from
one address cannot push the account-wide counter up. A password change checks the current password under the
same throttle (without the known-device exemption), so a stolen session cannot guess it without limit.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from flask import current_app
from sqlalchemy.exc import IntegrityError

from portal import audit, identity, mail, password_policy, ratelimit
from portal.account import security_log
from portal.account.sessions import end_other_sessions
from portal.auth import tokens
from portal.extensions import db
from portal.models import Organization, User, UserSession
from portal.orgs.services import create_organization
from portal.security import burn_password_check, hash_password, password_needs_rehash, verify_password
from portal.timeutil import utcnow

log = logging.getLogger("portal.auth")


class AuthError(Exception):
    """A sign-in that did not succeed; the message is safe to show (it never says whether the email exists)."""


class Throttled(AuthError):
    pass


class EmailTaken(Exception):
    pass


class WeakPassword(ValueError):
    """A password the policy refuses; the message says why, for the form (portal/password_policy.py)."""


class SignupThrottled(Exception):
    """Too many sign-ups from one client address."""


def normalize_email(email: str) -> str:
    return identity.normalize_email(email)


def check_password_policy(password: str, *, email: str, name: str = "") -> None:
    reason = password_policy.problem(password, email=email, name=name)
    if reason:
        raise WeakPassword(reason)


def find_user_by_email(email: str) -> User | None:
    return db.session.scalar(sa.select(User).where(sa.func.lower(User.email) == normalize_email(email)))


def create_user(
    email: str, display_name: str, password: str, *, is_staff: bool = False, verified: bool = False
) -> User:
    """An account (uncommitted). ``verified`` is for accounts whose address is known good (seed, tests)."""
    if find_user_by_email(email) is not None:
        raise EmailTaken(email)
    user = User(
        email=normalize_email(email),
        display_name=identity.normalize_name(display_name),
        password_hash=hash_password(password),
        is_staff=is_staff,
        email_verified_at=utcnow() if verified else None,
    )
    try:
        with db.session.begin_nested():  # the unique index decides when two sign-ups race
            db.session.add(user)
    except IntegrityError:
        raise EmailTaken(email) from None
    return user


@dataclass(frozen=True)
class SignupResult:
    """A new account and its organization, or neither when the address already had an account (its owner
    was told by mail; the visitor sees the same "check your email" answer)."""

    user: User | None
    org: Organization | None


def take_or_refuse(buckets: list[tuple[str, int]], window: object) -> list[tuple[str, datetime]] | None:
    """Count an attempt in every bucket and commit; if one is full, give every count back (a refused attempt
    does not count again) and return None."""
    taken = [(bucket, limit, *ratelimit.take(bucket, window)) for bucket, limit in buckets]  # type: ignore[arg-type]
    refused = any(count > limit for _, limit, count, _ in taken)
    if refused:
        for bucket, _, _, window_start in taken:
            ratelimit.give_back(bucket, window_start)
    db.session.commit()
    return None if refused else [(bucket, window_start) for bucket, _, _, window_start in taken]


def sign_up(
    email: str, display_name: str, password: str, *, ip: str | None = None, personal_org: bool = True
) -> SignupResult:
    """A new account with a personal organization on the free plan, owned by its creator, and a link to verify
    its address. An address that already has an account gets a mail instead, and no account changes.

    ``personal_org=False`` is for someone signing up to accept an invitation: they join that organization, so
    an empty one of their own would only be in the way (they can create one later)."""
    check_password_policy(password, email=email, name=display_name)
    cfg = current_app.config
    if ip and take_or_refuse([(f"signup:ip:{ip}", cfg["SIGNUP_MAX_PER_IP"])], cfg["SIGNUP_WINDOW"]) is None:
        raise SignupThrottled(ip)
    existing = find_user_by_email(email)
    if existing is None:
        try:
            user = create_user(email, display_name, password)
        except EmailTaken:  # signed up a moment ago by another request
            existing = find_user_by_email(email)
    else:
        hash_password(password)  # the work a new account costs, so the answer takes as long
    if existing is not None:
        if existing.is_active:
            mail.enqueue(existing.email, "signup_existing", name=existing.display_name)
        db.session.commit()
        return SignupResult(None, None)
    org = create_organization(f"{user.display_name}'s organization", user, ip=ip) if personal_org else None
    send_verification(user)
    db.session.commit()
    return SignupResult(user, org)


def send_verification(user: User) -> None:
    """Mail a link that verifies the account's address (``VERIFY_EMAIL_TTL``); the caller commits."""
    token = tokens.issue(user, tokens.VERIFY_EMAIL, current_app.config["VERIFY_EMAIL_TTL"])
    mail.enqueue(user.email, "verify_email", name=user.display_name, token=token)


def account_key(email: str) -> str:
    return hashlib.sha256(normalize_email(email).encode()).hexdigest()[:32]


def _throttle_buckets(email: str, ip: str | None, *, known_device: bool = False) -> list[tuple[str, int]]:
    """Failure counters: per account from one address (tight), per account overall (loose, and skipped for a
    device that signed in before), and per address across accounts. See the module docstring."""
    cfg = current_app.config
    account = account_key(email)
    buckets = [] if known_device else [(f"login:acct:{account}", cfg["LOGIN_MAX_FAILURES_PER_ACCOUNT_TOTAL"])]
    if ip:
        buckets.append((f"login:acct-ip:{account}:{ip}", cfg["LOGIN_MAX_FAILURES_PER_ACCOUNT"]))
        buckets.append((f"login:ip:{ip}", cfg["LOGIN_MAX_FAILURES_PER_IP"]))
    return buckets


def _count_attempt(email: str, ip: str | None, *, known_device: bool) -> list[tuple[str, datetime]]:
    taken = take_or_refuse(
        _throttle_buckets(email, ip, known_device=known_device), current_app.config["LOGIN_THROTTLE_WINDOW"]
    )
    if taken is None:
        raise Throttled("Too many failed sign-in attempts. Wait a few minutes and try again.")
    return taken


def authenticate(
    email: str,
    password: str,
    ip: str | None,
    user_agent: str | None = None,
    known_user_ids: Collection[str] = (),
) -> User:
    """The user for these credentials, or ``AuthError``. Failures count per account and per address.

    A failure against an existing account goes to that account's security log, for its owner to see; the
    answer is the same as for an unknown email. A throttled attempt is not logged (no password was checked,
    and an attacker could fill the log with them).

    Each attempt is counted (and committed) before the password is checked, and given back if it succeeds:
    with a gevent worker holding hundreds of connections, checking the counters first and counting the
    failure after the ≈ 100 ms hash would let every attempt that arrived meanwhile through.
    ``known_user_ids`` are the accounts this device signed in to before (its known-device cookie).
    """
    user = find_user_by_email(email)
    known = user is not None and str(user.id) in known_user_ids
    taken = _count_attempt(email, ip, known_device=known)
    if user is None:
        burn_password_check(password)
    if user is None or not verify_password(user.password_hash, password) or not user.is_active:
        log.info("sign-in failed for account %s from %s", account_key(email)[:12], ip or "-")
        if user is not None:
            reason = "wrong password" if user.is_active else "account deactivated"
            security_log.record(user, "signin.failure", ip=ip, user_agent=user_agent, reason=reason)
            db.session.commit()
        raise AuthError("Invalid email or password.")  # the attempt stays counted: a failure

    for bucket, window_start in taken:
        ratelimit.give_back(bucket, window_start)

    if password_needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    user.last_login_at = utcnow()
    db.session.commit()
    return user


def check_current_password(user: User, password: str, *, ip: str | None) -> bool:
    """Whether ``password`` is the account's, counted under the sign-in throttle (``Throttled`` when full)."""
    taken = _count_attempt(user.email, ip, known_device=False)
    if not verify_password(user.password_hash, password):
        return False
    for bucket, window_start in taken:
        ratelimit.give_back(bucket, window_start)
    return True


def change_password(
    user: User,
    current_password: str,
    new_password: str,
    *,
    ip: str | None = None,
    user_agent: str | None = None,
    keep: UserSession | None = None,
) -> bool:
    """Change the password (policy and sign-in throttle apply), end every session but ``keep`` and every pending
    account link (one asked for by whoever knew the old password must not outlive it)."""
    check_password_policy(new_password, email=user.email, name=user.display_name)
    if not check_current_password(user, current_password, ip=ip):
        return False
    user.password_hash = hash_password(new_password)
    ended = end_other_sessions(user, keep, "password.changed")
    tokens.discard(user.id)
    audit.record(
        "user.password_changed", organization_id=None, actor=user, target_type="user", target_id=user.id, ip=ip
    )
    security_log.record(user, "password.changed", ip=ip, user_agent=user_agent, sessions_ended=ended)
    db.session.commit()
    return True
