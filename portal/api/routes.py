"""Thin ``/v1`` views over :mod:`portal.verification`."""

from __future__ import annotations

from typing import Any

from flask import Response, g, jsonify, request

from portal.api import bp, get_verifier
from portal.api.answer import answer_verify
from portal.api.decorators import require_api_key
from portal.api.inputs import read_request
from portal.api.openapi import openapi_document


@bp.post("/keys/verify")
def verify() -> Any:
    """Verify a key (see :func:`portal.api.answer.answer_verify`); normally answered by the WSGI fast path."""
    status, headers, body = answer_verify(lambda: read_request(request), get_verifier())
    return Response(body, status, headers)


@bp.get("/whoami")
@require_api_key
def whoami() -> Any:
    """The demo protected route: who the key belongs to, and what is left of this minute's limit."""
    body = g.api_key.as_json()
    body.pop("valid", None)
    return jsonify(body)


@bp.post("/files")
@require_api_key(scope="files:write")
def upload_file() -> Any:
    """A demo route that needs the ``files:write`` scope: answers who may write, and stores nothing."""
    body = g.api_key.as_json()
    body.pop("valid", None)
    return jsonify({"accepted": True, **body})


@bp.get("/openapi.json")
def openapi() -> Any:
    return jsonify(openapi_document())
