"""The "known device" cookie: which accounts signed in from this browser before.

Signed with ``SECRET_KEY`` (itsdangerous), long-lived (``KNOWN_DEVICE_MAX_AGE``) and HttpOnly. It holds only
account ids and grants nothing by itself: it lets a sign-in skip the account-wide failure bucket, so guessing
from many addresses cannot lock the owner out (portal/auth/services.py says the whole policy).
"""

from __future__ import annotations

from typing import Any

from flask import current_app, request
from itsdangerous import BadSignature, URLSafeTimedSerializer

_SALT = "procode.known-device"
MAX_ACCOUNTS = 5  # a shared browser remembers its last few accounts


def _serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(str(current_app.config["SECRET_KEY"]), salt=_SALT)


def known_user_ids() -> list[str]:
    """The account ids this browser's cookie vouches for (none when absent, forged or expired)."""
    raw = request.cookies.get(current_app.config["KNOWN_DEVICE_COOKIE"])
    if not raw:
        return []
    max_age = int(current_app.config["KNOWN_DEVICE_MAX_AGE"].total_seconds())
    try:
        ids = _serializer().loads(raw, max_age=max_age)
    except BadSignature:
        return []
    return [str(i) for i in ids][:MAX_ACCOUNTS] if isinstance(ids, list) else []


def remember(response: Any, user_id: object) -> Any:
    """Add ``user_id`` to this browser's cookie (most recent first) on a successful sign-in."""
    cfg = current_app.config
    ids = [str(user_id), *(i for i in known_user_ids() if i != str(user_id))][:MAX_ACCOUNTS]
    response.set_cookie(
        cfg["KNOWN_DEVICE_COOKIE"],
        _serializer().dumps(ids),
        max_age=int(cfg["KNOWN_DEVICE_MAX_AGE"].total_seconds()),
        secure=cfg["SESSION_COOKIE_SECURE"],
        httponly=True,
        samesite="Lax",
    )
    return response
