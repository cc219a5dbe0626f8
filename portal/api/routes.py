"""Thin ``/v1`` views over :mod:`portal.verification`."""

from __future__ import annotations

from typing import Any

from flask import Response, current_app, g, jsonify, request

from portal.api import bp, get_verifier
from portal.api.answer import answer_gateway, answer_verify
from portal.api.decorators import require_api_key
from portal.api.inputs import MAX_BODY_BYTES, read_gateway_request, read_request
from portal.api.openapi import openapi_document
from portal.errors import json_error
from portal.keys import leaks, scanning


@bp.post("/keys/verify")
def verify() -> Any:
    """Verify a key (see :func:`portal.api.answer.answer_verify`); normally answered by the WSGI fast path."""
    answer = answer_verify(lambda: read_request(request), get_verifier())
    g.organization_id = answer.organization_id  # for the request's log line
    return Response(answer.body, answer.status, answer.headers)


@bp.route("/keys/verify/gateway", methods=["GET", "HEAD", "POST"])
def verify_gateway() -> Any:
    """A gateway's call (docs/gateways.md, :func:`portal.api.answer.answer_gateway`); normally the fast path's."""
    key_header = current_app.config.get("API_KEY_HEADER") or None
    answer = answer_gateway(lambda: read_gateway_request(request, key_header), get_verifier(), key_header)
    g.organization_id = answer.organization_id
    return Response(answer.body, answer.status, answer.headers)


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


def _no_store(response: Any, status: int) -> Any:
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("/keys/revoke")
def revoke_leaked() -> Any:
    """Anyone holding a key may revoke it. The answer is the same whether or not the key existed."""
    cfg = current_app.config
    window = cfg["LEAK_REPORT_WINDOW"]
    if not leaks.take_report_slot(request.remote_addr, cfg["LEAK_REPORT_MAX_PER_IP"], window):
        message = "Too many revocation requests from this address; retry later."
        return json_error(429, "rate_limited", message, {"Retry-After": str(int(window.total_seconds()))})
    if (request.content_length or 0) > MAX_BODY_BYTES or len(body := request.get_data()) > MAX_BODY_BYTES:
        return json_error(400, "body_too_large", f"The request body must be at most {MAX_BODY_BYTES} bytes.")
    payload = request.get_json(force=True, silent=True) if body else None
    candidate = payload.get("key") if isinstance(payload, dict) else None
    if not leaks.key_shaped(candidate):
        return json_error(400, "invalid_request", 'Send a JSON body {"key": "pk_…"} with the key to revoke.')
    leaks.revoke_reported(candidate, ip=request.remote_addr)
    return _no_store(jsonify(status="accepted"), 202)


@bp.post("/secret-scanning/report")
def secret_scanning_report() -> Any:
    """GitHub's secret scanning partner endpoint: a signed list of tokens found in public."""
    if (request.content_length or 0) > scanning.MAX_REPORT_BYTES:
        return json_error(400, "body_too_large", f"The body must be at most {scanning.MAX_REPORT_BYTES} bytes.")
    body = request.get_data()
    keys = scanning.public_keys(current_app.config.get("SECRET_SCANNING_PUBLIC_KEYS"))
    key_id = request.headers.get(scanning.KEY_ID_HEADER)
    if not scanning.signature_valid(keys, key_id, request.headers.get(scanning.SIGNATURE_HEADER), body):
        return json_error(401, "invalid_signature", "The report's signature does not verify with a configured key.")
    if len(body) > scanning.MAX_REPORT_BYTES:
        return json_error(400, "body_too_large", f"The body must be at most {scanning.MAX_REPORT_BYTES} bytes.")
    try:
        items = scanning.parse_report(body)
    except scanning.BadReport as exc:
        return json_error(400, "invalid_report", str(exc))
    return _no_store(jsonify(leaks.process_scan_report(items, ip=request.remote_addr)), 200)
