"""Authenticator-app codes (RFC 6238, 30-second steps, 6 digits) and the enrolment QR code."""

from __future__ import annotations

import hmac
from datetime import datetime

import pyotp

STEP_SECONDS = 30
DRIFT_STEPS = 1  # accept the previous and next step too: phone clocks drift and people type slowly


def new_secret() -> str:
    return pyotp.random_base32()  # 160 bits, the RFC 4226 recommendation


def provisioning_uri(secret: str, account: str, issuer: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=account, issuer_name=issuer)


def qr_svg_data_uri(uri: str) -> str:
    """The QR code as an SVG ``data:`` URI, drawn here: the secret never goes to a third-party QR service."""
    import segno  # only enrolment draws one; not every worker needs it in memory

    return str(segno.make(uri, error="m").svg_data_uri(scale=5, border=2, dark="#101828", light="#ffffff"))


def grouped(secret: str) -> str:
    """The setup key in groups of four, easier to type by hand."""
    return " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))


def is_code_shaped(value: str) -> bool:
    return len(value) == 6 and value.isascii() and value.isdigit()


def matching_step(secret: str, code: str, now: datetime) -> int | None:
    """The time step whose code ``code`` is, within the allowed drift, else None."""
    if not is_code_shaped(code):
        return None
    totp = pyotp.TOTP(secret)
    current = int(now.timestamp()) // STEP_SECONDS
    for step in range(current - DRIFT_STEPS, current + DRIFT_STEPS + 1):
        if hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None
