"""The web side of two-factor sign-in: the pending sign-in and passkey challenges kept in the Flask session,
and the relying party read from config and the request."""

from __future__ import annotations

import base64
import uuid
from typing import Any
from urllib.parse import urlsplit

from flask import current_app, flash, redirect, request, session, url_for
from werkzeug.wrappers import Response

from portal.extensions import db
from portal.http import safe_next_url
from portal.models import User
from portal.timeutil import utcnow
from portal.twofactor import passkeys, services
from portal.twofactor.passkeys import RelyingParty

PENDING = "two_factor_pending"
CHALLENGE_PREFIX = "webauthn_challenge_"


def required(user: User) -> bool:
    return services.is_enabled(user.id)


def begin(user: User, *, remember: bool, next_url: str | None) -> Response:
    """The password was right but a second factor is due: remember who is signing in, not signed in yet."""
    session.clear()
    session[PENDING] = {
        "user_id": str(user.id),
        "remember": bool(remember),
        "next": safe_next_url(next_url),
        "started": utcnow().timestamp(),
    }
    return redirect(url_for("twofactor.challenge"))


def pending_user() -> User | None:
    """The account half-way through signing in, if that began less than TWO_FACTOR_PENDING_TTL ago."""
    pending: Any = session.get(PENDING)
    if not isinstance(pending, dict):
        return None
    ttl = current_app.config["TWO_FACTOR_PENDING_TTL"].total_seconds()
    started = pending.get("started")
    if not isinstance(started, int | float) or not 0 <= utcnow().timestamp() - started <= ttl:
        session.pop(PENDING, None)
        return None
    try:
        user = db.session.get(User, uuid.UUID(str(pending.get("user_id"))))
    except ValueError:
        return None
    return user if user is not None and user.is_active else None


def finish(user: User, notice: str | None = None) -> Response:
    """Complete the sign-in the password began, as the sign-in view would have."""
    from portal.auth import devices
    from portal.auth.routes import landing_url, start_session

    pending = session.get(PENDING) or {}
    start_session(
        user, remember=bool(pending.get("remember")), second_factor=True
    )  # clears the pending state with the session
    if notice:
        flash(notice, "warning")
    return devices.remember(redirect(safe_next_url(pending.get("next")) or landing_url(user)), user.id)


def keep_challenge(ceremony: str, challenge: bytes) -> None:
    session[CHALLENGE_PREFIX + ceremony] = {
        "challenge": base64.urlsafe_b64encode(challenge).decode(),
        "issued": utcnow().timestamp(),
    }


def take_challenge(ceremony: str) -> bytes | None:
    """The challenge issued for ``ceremony`` less than ``CHALLENGE_MAX_AGE`` ago, removed so it can answer only
    one attempt (the services also refuse a challenge answered before: a copy of this cookie still holds it)."""
    value: Any = session.pop(CHALLENGE_PREFIX + ceremony, None)
    if not isinstance(value, dict) or not isinstance(value.get("challenge"), str):
        return None
    issued = value.get("issued")
    max_age = passkeys.CHALLENGE_MAX_AGE.total_seconds()
    if not isinstance(issued, int | float) or not 0 <= utcnow().timestamp() - issued <= max_age:
        return None
    try:
        return base64.urlsafe_b64decode(value["challenge"].encode())
    except ValueError:
        return None


def relying_party() -> RelyingParty:
    """``WEBAUTHN_RP_ID`` and ``PUBLIC_BASE_URL`` when set, else the host and origin the browser used."""
    cfg = current_app.config
    base = cfg.get("PUBLIC_BASE_URL")
    if base:
        parts = urlsplit(base)
        origin, host = f"{parts.scheme}://{parts.netloc}", parts.hostname or ""
    else:
        origin, host = request.host_url.rstrip("/"), urlsplit(request.host_url).hostname or ""
    return RelyingParty(id=cfg.get("WEBAUTHN_RP_ID") or host, name=cfg["WEBAUTHN_RP_NAME"], origin=origin)


def actor(user: User) -> services.Actor:
    return services.Actor(user=user, ip=request.remote_addr, user_agent=(request.user_agent.string or None))
