"""Encryption for secrets the portal must read again (TOTP secrets, webhook signing secrets), so cannot hash.

Fernet (AES-128-CBC with HMAC-SHA256, from ``cryptography``) under a key derived from ``SECRET_KEY`` with
HKDF-SHA256 and a purpose label, so the key is used for nothing else. A database dump alone reveals no secret;
rotating ``SECRET_KEY`` makes the stored secrets unreadable (see portal/config.py).
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING

from flask import current_app

if TYPE_CHECKING:
    from cryptography.fernet import Fernet

_PURPOSE = b"procode-portal totp secret v1"


class Unsealable(Exception):
    """The sealed value was not made with this key, was tampered with, or is older than allowed."""


def _fernet(purpose: bytes = _PURPOSE) -> Fernet:
    # Imported here: only two-factor pages seal, and the library is several MB of every worker otherwise.
    from cryptography.fernet import Fernet
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    secret_key = current_app.config["SECRET_KEY"]
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(str(secret_key).encode())
    return Fernet(base64.urlsafe_b64encode(key))


def seal(value: str, *, purpose: bytes = _PURPOSE) -> bytes:
    """Encrypt ``value``; another ``purpose`` (a webhook signing secret) derives another key."""
    return _fernet(purpose).encrypt(value.encode())


def unseal(token: bytes, *, max_age_seconds: int | None = None, purpose: bytes = _PURPOSE) -> str:
    from cryptography.fernet import InvalidToken

    try:
        return _fernet(purpose).decrypt(token, ttl=max_age_seconds).decode()
    except (InvalidToken, ValueError, TypeError):
        raise Unsealable from None
