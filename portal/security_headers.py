"""Headers every answer carries, and the request id, shared by the app and the WSGI fast path of /v1."""

from __future__ import annotations

import itertools
import os
import re
import secrets

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
# What a caller's request id may be made of: letters, digits, '.', '_' and '-'. It is written into every log line
# of its request, so a space, bracket, quote or line break could forge fields or whole lines in the text format.
_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]+").fullmatch
# A fresh request id is a random per-process prefix and a counter: unique like a uuid4, without a system call
# for randomness on every request (measurable on the verification path). Reset in each forked worker.
_PROCESS_ID = ""
_SEQUENCE = itertools.count()


def _new_process() -> None:
    global _PROCESS_ID, _SEQUENCE
    _PROCESS_ID = secrets.token_hex(10)
    _SEQUENCE = itertools.count()


_new_process()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_process)


def request_id(incoming: str | None) -> str:
    """The caller's request id, cut to ``MAX_REQUEST_ID_LENGTH`` characters, when it is made of letters, digits,
    '.', '_' and '-' only; else (none sent, or anything else in it) a fresh one. The one place a client's id is
    accepted: pages, errors and the /v1 fast path all call it."""
    if incoming:
        incoming = incoming[:MAX_REQUEST_ID_LENGTH]
        if _CLIENT_REQUEST_ID(incoming):
            return incoming
    return f"{_PROCESS_ID}{next(_SEQUENCE):012x}"
