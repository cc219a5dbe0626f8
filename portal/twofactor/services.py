"""Two-factor sign-in: enrolling an app, checking codes, recovery codes, turning it off, requirements.

No Flask request here: views pass the client address and user agent. An account has two-factor on while it
has an authenticator app (TOTP) or at least one passkey; passkeys themselves are in ``passkey_services``, which
shares the throttling, confirmation and turning on and off defined here.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import sqlalchemy as sa
from flask import current_app

from portal import audit, mail, ratelimit
from portal.extensions import db
from portal.models import (
    Membership,
    Organization,
    Passkey,
    RecoveryCode,
    TotpCredential,
    User,
)
from portal.security import verify_password
from portal.timeutil import utcnow
from portal.twofactor import hooks, sealing, totp

log = logging.getLogger("portal.twofactor")

RECOVERY_CODE_COUNT = 10
# No 0/o, 1/i/l: codes are read off paper. 12 characters of 31 ≈ 59 bits, so a plain SHA-256 is enough.
RECOVERY_ALPHABET = "23456789abcdefghjkmnpqrstuvwxyz"
RECOVERY_GROUPS = 3


class TwoFactorError(Exception):
    """A two-factor step that did not succeed; the message is safe to show."""


class InvalidCode(TwoFactorError):
    pass


class Throttled(TwoFactorError):
    pass


class WrongConfirmation(InvalidCode):
    """Neither the password nor a current code, where a change asks for one."""


@dataclass
class Status:
    totp: bool
    passkeys: list[Passkey] = field(default_factory=list)
    recovery_codes_left: int = 0

    @property
    def enabled(self) -> bool:
        return self.totp or bool(self.passkeys)


@dataclass(frozen=True)
class Actor:
    """Who asks, from where: what the security log and the sessions service need to know."""

    user: User
    ip: str | None = None
    user_agent: str | None = None


def status(user: User) -> Status:
    return Status(
        totp=db.session.get(TotpCredential, user.id) is not None,
        passkeys=passkeys_of(user),
        recovery_codes_left=int(
            db.session.scalar(
                sa.select(sa.func.count())
                .select_from(RecoveryCode)
                .where(RecoveryCode.user_id == user.id, RecoveryCode.used_at.is_(None))
            )
            or 0
        ),
    )


def is_enabled(user_id: uuid.UUID) -> bool:
    has_totp = sa.exists().where(TotpCredential.user_id == user_id)
    has_passkey = sa.exists().where(Passkey.user_id == user_id)
    return bool(db.session.scalar(sa.select(sa.or_(has_totp, has_passkey))))


def passkeys_of(user: User) -> list[Passkey]:
    return list(db.session.scalars(sa.select(Passkey).where(Passkey.user_id == user.id).order_by(Passkey.created_at)))


# Throttling and checks ---------------------------------------------------------------------------------------


@contextmanager
def counted_attempt(user: User) -> Iterator[None]:
    """Count a code attempt before it is checked (committed, so concurrent guesses each count), and give it
    back when the block succeeds: wrong answers are limited per account, right ones never use up the limit."""
    cfg = current_app.config
    bucket = f"2fa:user:{user.id}"
    count, window_start = ratelimit.take(bucket, cfg["TWO_FACTOR_THROTTLE_WINDOW"])
    db.session.commit()
    if count > cfg["TWO_FACTOR_MAX_FAILURES"]:
        raise Throttled("Too many wrong codes. Wait a few minutes and try again.")
    yield
    ratelimit.give_back(bucket, window_start)


def _use_totp_code(user: User, code: str) -> bool:
    """Accept a current code once: the row is locked and its step must be later than the last one used."""
    credential = db.session.get(TotpCredential, user.id, with_for_update=True, populate_existing=True)
    if credential is None:
        return False
    try:
        secret = sealing.unseal(credential.secret_sealed)
    except sealing.Unsealable:
        # Sealed under another SECRET_KEY (rotated, or a restore without the old one): the app cannot work
        # again; its owner signs in with a recovery code or a passkey and sets it up anew.
        log.warning("authenticator app of user %s sealed under another SECRET_KEY: its codes are refused", user.id)
        return False
    step = totp.matching_step(secret, code, utcnow())
    if step is None or (credential.last_used_step is not None and step <= credential.last_used_step):
        return False
    credential.last_used_step = step
    return True


def normalize_code(value: str) -> str:
    return "".join(value.split()).replace("-", "").lower()


def _recovery_digest(code: str) -> bytes:
    return hashlib.sha256(normalize_code(code).encode()).digest()


def _use_recovery_code(user: User, code: str) -> bool:
    row = db.session.scalar(
        sa.select(RecoveryCode)
        .where(
            RecoveryCode.user_id == user.id,
            RecoveryCode.code_hash == _recovery_digest(code),
            RecoveryCode.used_at.is_(None),
        )
        .with_for_update()
    )
    if row is None:
        return False
    row.used_at = utcnow()
    return True


def verify_sign_in_code(actor: Actor, code: str) -> str:
    """Check the second step of a sign-in: a current app code or an unused recovery code. Returns which."""
    user, value = actor.user, normalize_code(code)
    with counted_attempt(user):
        if totp.is_code_shaped(value):
            method = "totp" if _use_totp_code(user, value) else None
            wrong = "That code is not valid. Enter the current code from your app."
        else:
            method = "recovery_code" if _use_recovery_code(user, value) else None
            wrong = "That code is not valid, or it was already used."
        if method is None:
            hooks.record_security_event(user, "two_factor.failure", ip=actor.ip, user_agent=actor.user_agent)
            db.session.commit()
            raise InvalidCode(wrong)
    hooks.record_security_event(user, "two_factor.sign_in", ip=actor.ip, user_agent=actor.user_agent, via=method)
    db.session.commit()
    return method


def confirm_identity(actor: Actor, confirmation: str) -> None:
    """For changes that weaken the account: the password, or a current app code."""
    user, value = actor.user, normalize_code(confirmation)
    with counted_attempt(user):
        if totp.is_code_shaped(value):
            ok = _use_totp_code(user, value)
        else:
            ok = verify_password(user.password_hash, confirmation)
        if not ok:
            db.session.rollback()
            raise WrongConfirmation("That is neither your password nor a current code.")


# Recovery codes ------------------------------------------------------------------------------------------------


def _new_recovery_code() -> str:
    raw = "".join(secrets.choice(RECOVERY_ALPHABET) for _ in range(4 * RECOVERY_GROUPS))
    return "-".join(raw[i : i + 4] for i in range(0, len(raw), 4))


def _replace_recovery_codes(user: User) -> list[str]:
    db.session.execute(sa.delete(RecoveryCode).where(RecoveryCode.user_id == user.id))
    codes = [_new_recovery_code() for _ in range(RECOVERY_CODE_COUNT)]
    db.session.add_all(RecoveryCode(user_id=user.id, code_hash=_recovery_digest(code)) for code in codes)
    return codes


def regenerate_recovery_codes(actor: Actor, confirmation: str) -> list[str]:
    """Ten fresh codes (shown once) replace all the old ones, used or not."""
    if not is_enabled(actor.user.id):
        raise TwoFactorError("Turn on two-factor authentication first.")
    confirm_identity(actor, confirmation)
    codes = _replace_recovery_codes(actor.user)
    hooks.record_security_event(
        actor.user, "two_factor.recovery_codes_regenerated", ip=actor.ip, user_agent=actor.user_agent
    )
    db.session.commit()
    return codes


# Turning it on ------------------------------------------------------------------------------------------------


def _announce(user: User, template: str, **context: object) -> None:
    mail.enqueue(user.email, template, user=user, at=utcnow(), **context)


def turned_on(actor: Actor, method: str) -> list[str]:
    """The account just got its first factor: recovery codes (returned, to show once) and a mail. Sessions
    signed in with the password alone end, and this one counts as having passed the second step: enrolment
    just checked the factor."""
    codes = _replace_recovery_codes(actor.user)
    ended = hooks.end_other_sessions(actor.user, reason="twofactor.enabled")
    hooks.mark_second_factor_done(actor.user)
    hooks.record_security_event(
        actor.user, "two_factor.enabled", ip=actor.ip, user_agent=actor.user_agent, via=method, sessions_ended=ended
    )
    _announce(actor.user, "two_factor_enabled", method=method)
    return codes


def confirm_another_factor(actor: Actor, confirmation: str | None) -> None:
    """Adding a factor to an account that has two-factor on needs the password or a current code, like
    removing one: a session alone must not be enough to plant a way in."""
    if is_enabled(actor.user.id):
        confirm_identity(actor, confirmation or "")


def enable_totp(actor: Actor, secret: str, code: str, confirmation: str | None = None) -> list[str]:
    """Enrol an authenticator app once it has produced a correct code. Returns new recovery codes when this
    turns two-factor on (an account that already has passkeys keeps its codes: an empty list). With two-factor
    on already, ``confirmation`` (the password or a current code) is required."""
    user = actor.user
    confirm_another_factor(actor, confirmation)
    with counted_attempt(user):
        step = totp.matching_step(secret, normalize_code(code), utcnow())
        if step is None:
            raise InvalidCode("That code does not match. Check your phone's clock and enter the current code.")
    db.session.execute(sa.select(User.id).where(User.id == user.id).with_for_update())  # one enrolment at a time
    if db.session.get(TotpCredential, user.id) is not None:
        db.session.rollback()
        raise TwoFactorError("An authenticator app is already set up.")
    was_on = is_enabled(user.id)
    db.session.add(TotpCredential(user_id=user.id, secret_sealed=sealing.seal(secret), last_used_step=step))
    codes = [] if was_on else turned_on(actor, "an authenticator app")
    hooks.record_security_event(user, "totp.added", ip=actor.ip, user_agent=actor.user_agent)
    db.session.commit()
    return codes


# Turning it off -----------------------------------------------------------------------------------------------


def turned_off_if_last(actor: Actor, reason: str) -> bool:
    """After removing a factor: with none left, two-factor is off. Recovery codes go, other sessions and every
    pending account link end, and the owner is told by mail. Returns whether that happened."""
    db.session.flush()
    if is_enabled(actor.user.id):
        return False
    db.session.execute(sa.delete(RecoveryCode).where(RecoveryCode.user_id == actor.user.id))
    hooks.end_other_sessions(actor.user, reason=reason)
    hooks.discard_account_links(actor.user)
    hooks.record_security_event(actor.user, "two_factor.disabled", ip=actor.ip, user_agent=actor.user_agent)
    _announce(actor.user, "two_factor_disabled")
    return True


def disable(actor: Actor, confirmation: str) -> None:
    """Remove every second factor of the account."""
    if not is_enabled(actor.user.id):
        raise TwoFactorError("Two-factor authentication is already off.")
    confirm_identity(actor, confirmation)
    db.session.execute(sa.delete(TotpCredential).where(TotpCredential.user_id == actor.user.id))
    db.session.execute(sa.delete(Passkey).where(Passkey.user_id == actor.user.id))
    turned_off_if_last(actor, "two-factor turned off")
    db.session.commit()


def remove_totp(actor: Actor, confirmation: str) -> bool:
    """Remove the authenticator app; returns whether that turned two-factor off."""
    if db.session.get(TotpCredential, actor.user.id) is None:
        raise TwoFactorError("No authenticator app is set up.")
    confirm_identity(actor, confirmation)
    db.session.execute(sa.delete(TotpCredential).where(TotpCredential.user_id == actor.user.id))
    hooks.record_security_event(actor.user, "totp.removed", ip=actor.ip, user_agent=actor.user_agent)
    off = turned_off_if_last(actor, "authenticator app removed")
    db.session.commit()
    return off


# Requirements -------------------------------------------------------------------------------------------------


def set_org_requirement(org: Organization, required: bool, actor: User, *, ip: str | None = None) -> bool:
    """Require two-factor of every member (or stop). Whoever changes it, either way, must have two-factor and
    have signed in with it (``actor.current_session``), so a member the requirement blocks cannot lift it.
    Returns whether anything changed."""
    if required == org.require_two_factor:
        return False
    if not is_enabled(actor.id):
        raise TwoFactorError("Turn on two-factor authentication for your own account first.")
    if not hooks.session_has_second_factor(actor):
        raise TwoFactorError("Sign out and sign in again with your second factor to change this.")
    org.require_two_factor = required
    audit.record(
        "org.two_factor_required" if required else "org.two_factor_optional",
        organization_id=org.id,
        actor=actor,
        target_type="organization",
        target_id=org.id,
        ip=ip,
    )
    db.session.commit()
    return True


def org_requiring_two_factor(slug: str, user_id: uuid.UUID) -> Organization | None:
    """The organization ``slug`` if ``user_id`` is a member and it requires two-factor, else None."""
    return db.session.scalar(
        sa.select(Organization)
        .join(Membership, Membership.organization_id == Organization.id)
        .where(Organization.slug == slug, Organization.require_two_factor, Membership.user_id == user_id)
    )
