"""Two-factor sign-in with passkeys (WebAuthn): adding one, signing in with one, removing one.

No Flask request here: views pass the client address and user agent, and the relying party. Throttling, the
confirmation a change asks for, and what turning two-factor on or off does are shared with the app and
recovery codes in ``services``.
"""

from __future__ import annotations

import hashlib
import uuid

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from portal.extensions import db
from portal.models import Passkey, SpentPasskeyChallenge, User
from portal.timeutil import utcnow
from portal.twofactor import hooks, passkeys
from portal.twofactor.passkeys import PasskeyError, RelyingParty
from portal.twofactor.services import (
    Actor,
    confirm_another_factor,
    confirm_identity,
    counted_attempt,
    is_enabled,
    turned_off_if_last,
    turned_on,
)


def spend_challenge(challenge: bytes) -> None:
    """Accept an issued passkey challenge once (no commit: it is spent with the change it allows). The session
    cookie that carried it is signed, not single use, so the record of spent ones is kept here; rows older than
    any challenge still usable are deleted on the way."""
    db.session.execute(
        sa.delete(SpentPasskeyChallenge).where(
            SpentPasskeyChallenge.spent_at < utcnow() - 2 * passkeys.CHALLENGE_MAX_AGE
        )
    )
    spent = db.session.scalar(
        insert(SpentPasskeyChallenge)
        .values(challenge_hash=hashlib.sha256(challenge).digest(), spent_at=utcnow())
        .on_conflict_do_nothing()
        .returning(SpentPasskeyChallenge.challenge_hash)
    )
    if spent is None:
        raise PasskeyError("This passkey request was answered already. Try again.")


def add_passkey(
    actor: Actor, name: str, credential_json: str, challenge: bytes, rp: RelyingParty, confirmation: str | None = None
) -> list[str]:
    """Register a verified passkey. Returns new recovery codes when this turns two-factor on. With two-factor on
    already, ``confirmation`` (the password or a current code) is required."""
    user = actor.user
    confirm_another_factor(actor, confirmation)
    spend_challenge(challenge)
    new = passkeys.verify_registration(credential_json, challenge, rp)
    if db.session.scalar(sa.select(Passkey.id).where(Passkey.credential_id == new.credential_id)) is not None:
        raise PasskeyError("This passkey is already registered.")
    was_on = is_enabled(user.id)
    db.session.add(
        Passkey(
            user_id=user.id,
            name=name,
            credential_id=new.credential_id,
            public_key=new.public_key,
            sign_count=new.sign_count,
            transports=new.transports,
        )
    )
    codes = [] if was_on else turned_on(actor, "a passkey")
    hooks.record_security_event(user, "passkey.added", ip=actor.ip, user_agent=actor.user_agent, name=name)
    db.session.commit()
    return codes


def sign_in_with_passkey(actor: Actor, credential_json: str, challenge: bytes, rp: RelyingParty) -> Passkey:
    """The second step of a sign-in with one of the account's passkeys; counts as an attempt like a code."""
    user = actor.user
    with counted_attempt(user):
        spend_challenge(challenge)
        credential_id = passkeys.credential_id_of(credential_json)
        passkey = db.session.scalar(
            sa.select(Passkey)
            .where(Passkey.user_id == user.id, Passkey.credential_id == credential_id)
            .with_for_update()
        )
        if passkey is None:
            raise PasskeyError("That passkey is not registered to this account.")
        passkey.sign_count = passkeys.verify_assertion(credential_json, challenge, rp, passkey)
        passkey.last_used_at = utcnow()
        hooks.record_security_event(
            user, "two_factor.sign_in", ip=actor.ip, user_agent=actor.user_agent, via="passkey", name=passkey.name
        )
    db.session.commit()
    return passkey


def find_passkey(user: User, passkey_id: object) -> Passkey | None:
    """One of the user's passkeys by the id in a URL, or None: a malformed id or someone else's is not found."""
    try:
        key = uuid.UUID(str(passkey_id))
    except ValueError:
        return None
    return db.session.scalar(sa.select(Passkey).where(Passkey.id == key, Passkey.user_id == user.id))


def remove_passkey(actor: Actor, passkey: Passkey, confirmation: str) -> bool:
    """Remove one passkey; returns whether that turned two-factor off (it was the last factor)."""
    confirm_identity(actor, confirmation)
    name = passkey.name
    db.session.execute(sa.delete(Passkey).where(Passkey.id == passkey.id, Passkey.user_id == actor.user.id))
    hooks.record_security_event(actor.user, "passkey.removed", ip=actor.ip, user_agent=actor.user_agent, name=name)
    off = turned_off_if_last(actor, "last passkey removed")
    db.session.commit()
    return off
