"""Password hashing (argon2id) and small token helpers."""

from __future__ import annotations

import hashlib
import secrets

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError
from flask import current_app

from portal import green


def _hasher() -> PasswordHasher:
    cfg = current_app.config
    return PasswordHasher(
        time_cost=cfg["ARGON2_TIME_COST"],
        memory_cost=cfg["ARGON2_MEMORY_COST"],
        parallelism=cfg["ARGON2_PARALLELISM"],
        type=Type.ID,
    )


def hash_password(password: str) -> str:
    return green.offload(_hasher().hash, password)


def _verify(hasher: PasswordHasher, password_hash: str, password: str) -> bool:
    """Runs in gevent's thread pool: a wrong password must come back as False, not as an exception, which
    gevent's hub would print with a full traceback for every failed sign-in."""
    try:
        return hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def verify_password(password_hash: str, password: str) -> bool:
    return green.offload(_verify, _hasher(), password_hash, password)


def password_needs_rehash(password_hash: str) -> bool:
    return _hasher().check_needs_rehash(password_hash)


# A real hash to verify against when the email is unknown, so a miss costs as much time as a wrong password.
_DUMMY_PASSWORD = secrets.token_urlsafe(16)


def burn_password_check(password: str) -> None:
    dummy = current_app.extensions.get("portal_dummy_hash")
    if dummy is None:
        dummy = current_app.extensions["portal_dummy_hash"] = hash_password(_DUMMY_PASSWORD)
    verify_password(dummy, password)


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()
