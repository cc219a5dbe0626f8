"""Headers every answer carries, and the request id, shared by the app and the WSGI fast path of /v1."""

from __future__ import annotations

import uuid

# Set on every answer, HTML or not.
SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "same-origin"),
    # Powerful features the portal never uses, off for every frame; WebAuthn stays allowed for passkeys.
    (
        "Permissions-Policy",
        "camera=(), microphone=(), geolocation=(), payment=(), usb=(), "
        "publickey-credentials-get=(self), publickey-credentials-create=(self)",
    ),
)
# Sent only when cookies are Secure (the site is served over https): browsers then refuse plain http.
STRICT_TRANSPORT_SECURITY = "max-age=31536000; includeSubDomains"
# Answers that must never be kept by a browser or proxy cache: signed-in pages and data exports.
NO_STORE_MIMETYPES = ("text/html", "text/csv")
# Only HTML pages run in a browser context that a policy can restrict.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)
REQUEST_ID_HEADER = "X-Request-ID"
MAX_REQUEST_ID_LENGTH = 64


def request_id(incoming: str | None) -> str:
    """The caller's request id (trimmed, so logs stay bounded), or a fresh one when it sent none."""
    return (incoming or "")[:MAX_REQUEST_ID_LENGTH] or uuid.uuid4().hex
