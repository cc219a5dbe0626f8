"""Webhook endpoints: where an organization's events are sent, and the secrets that sign them.

A signing secret is ``whsec_`` and 32 random bytes in base64, the Standard Webhooks format, so a receiver
passes it as is to the ``standardwebhooks`` library. It is shown once, when it is made; the portal keeps it
sealed (it must read it to sign) and never logs it.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass
from datetime import datetime

from portal.models import WebhookEndpoint
from portal.timeutil import utcnow
from portal.twofactor import sealing

SECRET_PREFIX = "whsec_"  # noqa: S105 -- the format's prefix, not a secret
_PURPOSE = b"procode-portal webhook signing secret v1"


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def seal_secret(secret: str) -> bytes:
    return sealing.seal(secret, purpose=_PURPOSE)


def secret_bytes(secret: str) -> bytes:
    """The HMAC key of a ``whsec_`` secret."""
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


@dataclass(frozen=True)
class SigningKeys:
    """The secrets that sign a delivery now: the current one, and the previous one during its overlap."""

    current: bytes
    previous: bytes | None


def signing_keys(endpoint: WebhookEndpoint, *, now: datetime | None = None) -> SigningKeys:
    moment = now or utcnow()
    current = secret_bytes(sealing.unseal(endpoint.secret_sealed, purpose=_PURPOSE))
    previous = None
    if endpoint.previous_secret_sealed and endpoint.previous_secret_until and endpoint.previous_secret_until > moment:
        previous = secret_bytes(sealing.unseal(endpoint.previous_secret_sealed, purpose=_PURPOSE))
    return SigningKeys(current, previous)
