"""Headers every answer carries, and the request id, shared by the app and the WSGI fast path of /v1."""

from __future__ import annotations

import uuid

# Set on every answer, HTML or not.
SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "same-origin"),
)
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
