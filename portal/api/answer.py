"""The HTTP answer of ``POST /v1/keys/verify``, built without Flask globals.

Shared by the Flask view and the WSGI fast path (:mod:`portal.api.fastpath`), so both answer identically.
"""

from __future__ import annotations

import json
import logging
import time

from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wrappers import Request, Response

from portal.api.backend import DatabaseUnavailable
from portal.api.inputs import MAX_BODY_BYTES, BadRequest, parse_verify_request
from portal.api.services import Verifier

log = logging.getLogger("portal.api")
JSON = "application/json"


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    """``{"error": {"code", "message"}}`` with ``status``; the shape every /v1 error has."""
    body = json.dumps({"error": {"code": code, "message": message}}, separators=(",", ":"))
    return Response(body, status, headers, content_type=JSON)


def answer_verify(request: Request, verifier: Verifier) -> Response:
    """Parse, verify, answer: 200 valid, 401 unusable key, 429 rate limited, 400 not a verification."""
    started = time.perf_counter()
    try:
        payload = parse_verify_request(request)
    except BadRequest as exc:
        return error_response(400, exc.code, exc.message)
    except RequestEntityTooLarge:
        return error_response(
            400, "body_too_large", f"The request body must be at most {MAX_BODY_BYTES} bytes."
        )
    try:
        result = verifier.verify(payload.key, payload.endpoint, started)
    except DatabaseUnavailable:
        return error_response(
            503, "unavailable", "Key verification is unavailable; retry shortly.", {"Retry-After": "1"}
        )
    headers = result.headers()
    headers["Cache-Control"] = "no-store"
    return Response(
        json.dumps(result.as_json(), separators=(",", ":")), result.status_code, headers, content_type=JSON
    )
