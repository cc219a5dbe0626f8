"""The HTTP answers of ``POST /v1/keys/verify`` and of a gateway's call as plain status, headers and bytes.

Shared by the Flask views and the WSGI fast path (:mod:`portal.api.fastpath`), so both answer identically.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import NamedTuple

from werkzeug.exceptions import RequestEntityTooLarge

from portal.api.inputs import (
    MAX_BODY_BYTES,
    BadRequest,
    NoCredential,
    RawGatewayRequest,
    RawRequest,
    VerifyRequest,
    parse_gateway_request,
    parse_verify_request,
    peer_address,
)
from portal.errors import error_body
from portal.verification.outcomes import DatabaseUnavailable, Verification
from portal.verification.verifier import Verifier

JSON = "application/json"


class Answer(NamedTuple):
    """What to send, and the organization of the key when the answer knows it (for the request's log line)."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    organization_id: str | None = None


# RFC 6750: a call that carries no key is asked for one.
CHALLENGE = 'Bearer realm="procode"'
# What a gateway copies onto the request it lets through (docs/gateways.md): every one on every 200, so a
# client's own header of the same name is always replaced.
IDENTITY_HEADERS = (
    "X-ProCode-Organization",
    "X-ProCode-Organization-Slug",
    "X-ProCode-Plan",
    "X-ProCode-Key-Id",
    "X-ProCode-Environment",
    "X-ProCode-Scopes",
)


def error_answer(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Answer:
    """``{"error": {"code", "message"}}`` with ``status``: the shape of every /v1 error."""
    body = json.dumps(error_body(code, message), separators=(",", ":")).encode()
    return Answer(status, [("Content-Type", JSON), ("Cache-Control", "no-store"), *(headers or {}).items()], body)


def answer_verify(read: Callable[[], RawRequest], verifier: Verifier) -> Answer:
    """Read, verify, answer: 200 valid, 401 unusable key, 403 forbidden by the key's policy, 429 rate limited,
    over quota or too many invalid keys from the client's address, 400 not a verification.

    The client's address is ``client_ip`` when given, else the peer that called (ProCode's own API servers send
    ``client_ip``, so their calls never share one budget of invalid keys)."""
    started = time.perf_counter()
    try:
        raw = read()
        payload = parse_verify_request(raw)
    except BadRequest as exc:
        return error_answer(400, exc.code, exc.message)
    except RequestEntityTooLarge:
        return error_answer(400, "body_too_large", f"The request body must be at most {MAX_BODY_BYTES} bytes.")
    peer = peer_address(raw.remote_addr) if payload.client_ip is None else None  # parsed only when used
    return _verified(verifier, payload, started, peer)


def _verified(
    verifier: Verifier, payload: VerifyRequest, started: float, peer: str | None, *, identity: bool = False
) -> Answer:
    """The answer to a parsed call: 503 when the database cannot answer, else the verification's own status,
    headers and body (with the key's identity headers for a gateway)."""
    try:
        result = verifier.verify(
            payload.key,
            payload.endpoint,
            started,
            scope=payload.scope,
            ip=payload.client_ip,
            user_agent=payload.user_agent,
            peer=peer,
        )
    except DatabaseUnavailable:
        return error_answer(503, "unavailable", "Key verification is unavailable; retry shortly.", {"Retry-After": "1"})
    headers = [("Content-Type", JSON), ("Cache-Control", "no-store"), *result.headers().items()]
    if identity and result.valid:
        headers += identity_headers(result)
    return Answer(result.status_code, headers, result.answer_json().encode(), result.organization_id)


def identity_headers(result: Verification) -> list[tuple[str, str]]:
    """The key's identity for the upstream behind a gateway; scopes space-separated, ``*`` for full access."""
    scopes = "*" if result.scopes is None else " ".join(result.scopes)
    values = (
        result.organization_id,
        result.organization_slug,
        result.plan,
        result.key_id,
        result.environment,
        scopes,
    )
    return [(name, str(value or "")) for name, value in zip(IDENTITY_HEADERS, values, strict=True)]


def answer_gateway(read: Callable[[], RawGatewayRequest], verifier: Verifier, key_header: str | None) -> Answer:
    """A gateway's call (nginx ``auth_request``, Caddy ``forward_auth``): the statuses of
    :func:`answer_verify`, except that a call without a key is 401 with a ``Bearer`` challenge, and a 200
    carries the key's identity in :data:`IDENTITY_HEADERS`."""
    started = time.perf_counter()
    try:
        payload = parse_gateway_request(read(), key_header)
    except NoCredential as exc:
        challenge = CHALLENGE if exc.code == "missing_key" else f'{CHALLENGE}, error="invalid_request"'
        return error_answer(401, exc.code, exc.message, {"WWW-Authenticate": challenge})
    except BadRequest as exc:
        return error_answer(400, exc.code, exc.message)
    return _verified(verifier, payload, started, None, identity=True)
