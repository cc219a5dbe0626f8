"""Thin ``/v1`` views over :mod:`portal.api.services`."""

from __future__ import annotations

import json
import time
from typing import Any

from flask import Response, g, jsonify, request

from portal.api import bp, services
from portal.api.backend import DatabaseUnavailable
from portal.api.decorators import require_api_key
from portal.api.inputs import BadRequest, parse_verify_request
from portal.api.openapi import openapi_document
from portal.errors import json_error

_NO_STORE = ("Cache-Control", "no-store")


@bp.post("/keys/verify")
def verify() -> Any:
    """Verify a key: 200 valid, 401 not a usable key, 429 rate limited; 400 for requests that are not one."""
    started = time.perf_counter()
    try:
        payload = parse_verify_request(request)
    except BadRequest as exc:
        return json_error(400, exc.code, exc.message)
    try:
        result = services.verify(payload.key, payload.endpoint, started)
    except DatabaseUnavailable:
        return json_error(
            503, "unavailable", "Key verification is unavailable; retry shortly.", {"Retry-After": "1"}
        )
    headers = result.headers()
    headers.setdefault(*_NO_STORE)
    return Response(
        json.dumps(result.as_json(), separators=(",", ":")),
        result.status_code,
        headers,
        mimetype="application/json",
    )


@bp.get("/whoami")
@require_api_key
def whoami() -> Any:
    """The demo protected route: who the key belongs to, and what is left of this minute's limit."""
    body = g.api_key.as_json()
    body.pop("valid", None)
    return jsonify(body)


@bp.get("/openapi.json")
def openapi() -> Any:
    return jsonify(openapi_document())
