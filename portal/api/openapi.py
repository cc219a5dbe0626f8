"""The OpenAPI 3.1 document for ``/v1``, written by hand so it says what the code promises."""

from __future__ import annotations

from typing import Any

from flask import current_app

from portal.api import openapi_webhooks
from portal.api.answer import IDENTITY_HEADERS
from portal.api.inputs import MAX_BODY_BYTES
from portal.api.openapi_components import (
    RATE_HEADERS,
    api_schemas,
    header_parameter,
    json_response,
    ref,
    response_headers,
    security_schemes,
    with_example,
)
from portal.errors import error_body
from portal.scopes import SCOPES
from portal.verification.outcomes import RateLimit, Verification

# Examples are answers the verification code itself renders (Verification.as_json, error_body), so the
# documentation cannot drift from what the API sends.
_KEY, _ORG = "5f0c2a4e-8d1b-4c3a-9e7f-2b6d1a0c9e84", "0b7e9d52-3c4f-4a1e-8f6b-7d2c5e9a1f03"
_LIMIT = RateLimit(limit=1000, remaining=987, reset=42)


def _protected(valid: dict[str, Any]) -> dict[str, Any]:
    """A protected route's 200 body: the verification's answer without ``valid``."""
    return {k: v for k, v in valid.items() if k != "valid"}


def _error_of(invalid: dict[str, Any]) -> dict[str, Any]:
    """The ``{"error": {"code", "message"}}`` body a protected route answers for a refused key."""
    return error_body(invalid["code"], invalid["message"])


def _answer(outcome: str, **fields: Any) -> dict[str, Any]:
    """An example answer rendered by ``Verification.as_json`` itself, so it cannot drift from what is sent."""
    fields.setdefault("ratelimit", _LIMIT)
    return Verification(outcome, _KEY, _ORG, "acme", "pro", "live", **fields).as_json()


def _examples() -> dict[str, Any]:
    """One example per status of ``/keys/verify``, shared by the routes that answer the same way."""
    return {
        "200": _answer("ok", scopes=["translate:write"], meta_json='{"customer":"cus_1042"}', external_id="tenant-7"),
        "400": error_body("invalid_json", "The body is not valid JSON (UTF-8)."),
        "401": _answer("revoked"),
        "403": _answer("forbidden", reason="insufficient_scope", scope="files:write", scopes=["translate:write"]),
        "429": _answer("rate_limited", ratelimit=RateLimit(limit=1000, remaining=0, reset=17)),
        "503": error_body("unavailable", "Key verification is unavailable; retry shortly."),
    }


def _budget() -> str:
    """What the budget of invalid keys promises, with this deployment's number."""
    budget = int(current_app.config.get("API_INVALID_KEY_BUDGET", 0))
    if budget <= 0:
        return ""
    return (
        f" Calls with a malformed or unknown key are limited per client address: after {budget} of them in a "
        "minute (UTC) on one server process, that process answers every call from the address, whatever its key, "
        "429 `too_many_invalid_keys` with `Retry-After` until the minute ends, without looking the key up. "
        "The budget is per process: with several processes or servers behind a load balancer an address "
        "may make that many failed calls on each. Other addresses are never affected."
    )


def _gateway_operation(method: str, unavailable: dict[str, Any]) -> dict[str, Any]:
    """One of the three methods a gateway may call ``/keys/verify/gateway`` with; they answer alike."""
    operation: dict[str, Any] = {
        "operationId": f"verifyKeyForGateway{method.capitalize()}",
        "summary": f"Verify the key of a call a gateway is forwarding ({method.upper()}; docs/gateways.md)",
        "description": (
            "For nginx `auth_request`, Caddy `forward_auth` and the like: GET, HEAD and POST answer alike and any "
            "body is ignored. The key comes from `Authorization: Bearer` or the header named by `API_KEY_HEADER`; "
            "the metered endpoint is `METHOD /path` of the forwarded call (no query string). The client address "
            "for IP allowlists is the last `X-Forwarded-For` entry when the portal runs with "
            "`PORTAL_TRUST_PROXY=1`. Every answer with a key is one usage row."
        ),
        "security": [{"bearer": []}, *([{"apiKeyHeader": []}] if current_app.config.get("API_KEY_HEADER") else [])],
        "parameters": [
            {
                "name": "scope",
                "in": "query",
                "required": False,
                "schema": {"type": "string", "enum": list(SCOPES)},
                "description": "The permission the forwarded call needs; a restricted key without it is 403.",
            },
            header_parameter("X-Forwarded-Uri", "The forwarded call's URI (Caddy, Traefik)."),
            header_parameter("X-Original-URI", "The forwarded call's URI when X-Forwarded-Uri is absent (nginx)."),
            header_parameter("X-Forwarded-Method", "The forwarded call's method."),
            header_parameter("X-Original-Method", "The forwarded call's method when X-Forwarded-Method is absent."),
            header_parameter("X-Forwarded-For", "The client's address, read with `PORTAL_TRUST_PROXY=1`."),
        ],
        "responses": {
            "200": json_response(
                ref("Valid"),
                "The key is valid and the call was admitted: copy the `X-ProCode-*` headers onto the forwarded "
                "request.",
                (*RATE_HEADERS, *IDENTITY_HEADERS),
            ),
            "400": json_response(
                ref("Error"), "The gateway's configuration is wrong: an unknown `scope`. Not metered."
            ),
            "401": json_response(
                {"oneOf": [ref("Invalid"), ref("Error")]},
                'No key (`missing_key`, with `WWW-Authenticate: Bearer realm="procode"`; not metered), two '
                "different keys (`conflicting_keys`; not metered), or a malformed, unknown, revoked or expired key "
                '(`WWW-Authenticate: Bearer error="invalid_token"`).',
                RATE_HEADERS,
            ),
            "403": json_response(ref("Invalid"), "`insufficient_scope` or `ip_not_allowed`.", RATE_HEADERS),
            "429": json_response(ref("Invalid"), "Rate limited or over quota.", (*RATE_HEADERS, "Retry-After")),
            "503": unavailable,
        },
    }
    examples = {**_examples(), "400": error_body("invalid_scope", "'scope' must be one of the ProCode API scopes.")}
    responses: dict[str, Any] = operation["responses"]
    for status, answer in responses.items():
        responses[status] = with_example(answer, examples[status])
    return operation


def openapi_document() -> dict[str, Any]:
    """The whole document for ``/v1/openapi.json`` and the docs page, built per request from the app's config."""
    bad_request = json_response(
        ref("Error"),
        "Not a verification request (not JSON, wrong content type, missing or "
        "oversized field, non-string or non-ASCII key or endpoint). Not metered.",
    )
    limited = json_response(
        ref("Error"),
        "Rate limited or over quota, or `too_many_invalid_keys`: the caller's address spent its budget of "
        "malformed or unknown keys.",
        (*RATE_HEADERS, "Retry-After"),
    )
    unavailable = json_response(
        ref("Error"),
        "The database is unreachable or did not answer within the verification's deadline (5 s by default); "
        "retry after `Retry-After` seconds.",
        ("Retry-After",),
    )
    examples = _examples()
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ProCode key verification API",
            "version": "1",
            "description": (
                "Check ProCode API keys, enforce each key's policy (scopes, IP allowlist), each "
                "organization's per-minute rate limit, each key's own limit and the Free plan's monthly quota, "
                "and meter every answered call. Limits are counted in fixed one-minute windows (UTC), the quota "
                "per UTC month; at most `limit` calls are admitted in each window, exactly, whatever the number "
                "of clients or servers, and a call refused by one limit counts against none." + _budget()
            ),
        },
        "servers": [{"url": f"{current_app.config.get('PUBLIC_API_BASE', '')}/v1"}],
        "components": {
            "schemas": {**api_schemas(), **openapi_webhooks.schemas()},
            "headers": response_headers(),
            "parameters": openapi_webhooks.parameters(),
            "securitySchemes": security_schemes(current_app.config.get("API_KEY_HEADER") or None),
        },
        # What the portal POSTs to an organization's webhook endpoints (portal/api/openapi_webhooks.py).
        "webhooks": openapi_webhooks.webhooks(),
        "paths": {
            "/keys/verify": {
                "post": {
                    "operationId": "verifyKey",
                    "summary": "Verify a key and count the call against its organization's rate limit",
                    "description": (
                        "Every answered call for an existing key (valid, revoked, expired, forbidden, rate "
                        "limited, over quota) is recorded as one usage row; calls with a malformed or unknown "
                        "key, and those refused as `too_many_invalid_keys`, are counted per minute and client "
                        "address instead. Rate-limit headers are sent whenever the key's organization is known "
                        "(valid, revoked, expired, rate limited). "
                        f"The body may be at most {MAX_BODY_BYTES} bytes."
                    ),
                    "security": [{}, {"bearer": []}],
                    "requestBody": {
                        "required": False,
                        "content": {"application/json": {"schema": ref("VerifyRequest")}},
                    },
                    "responses": {
                        "200": json_response(
                            ref("Valid"),
                            "The key is valid and the call was admitted.",
                            RATE_HEADERS,
                            examples["200"],
                        ),
                        "400": with_example(bad_request, examples["400"]),
                        "401": json_response(
                            ref("Invalid"),
                            "Malformed, unknown, revoked or expired key "
                            '(`WWW-Authenticate: Bearer error="invalid_token"`).',
                            RATE_HEADERS,
                            examples["401"],
                        ),
                        "403": json_response(
                            ref("Invalid"),
                            "Valid key, but its policy refuses this call: `insufficient_scope` (with "
                            '`WWW-Authenticate: Bearer error="insufficient_scope", scope="…"`) or '
                            "`ip_not_allowed`. Metered as outcome `forbidden`; nothing is counted against the "
                            "limits.",
                            RATE_HEADERS,
                            examples["403"],
                        ),
                        "429": json_response(
                            ref("Invalid"),
                            "Valid key, but the organization's or the key's limit for this minute is used up "
                            "(`rate_limited`), or, on the Free plan, the monthly quota (`quota_exceeded`); or "
                            "the client's address has spent its budget of malformed or unknown keys "
                            "(`too_many_invalid_keys`, any key, no lookup, no rate-limit headers).",
                            (*RATE_HEADERS, "Retry-After"),
                            examples["429"],
                        ),
                        "503": with_example(unavailable, examples["503"]),
                    },
                }
            },
            "/keys/verify/gateway": {
                method: _gateway_operation(method, unavailable) for method in ("get", "head", "post")
            },
            "/whoami": {
                "get": {
                    "operationId": "whoami",
                    "summary": "Try a key: a route protected by `@require_api_key`",
                    "security": [{"bearer": []}],
                    "responses": {
                        "200": json_response(
                            {"type": "object"},
                            "Who the key belongs to, and its rate limit.",
                            RATE_HEADERS,
                            _protected(examples["200"]),
                        ),
                        "400": with_example(bad_request, examples["400"]),
                        "401": json_response(
                            ref("Error"),
                            "Missing, malformed, unknown, revoked or expired key.",
                            example=_error_of(examples["401"]),
                        ),
                        "403": json_response(
                            ref("Error"),
                            "The key's IP allowlist does not include the caller.",
                            example=_error_of(_answer("forbidden", reason="ip_not_allowed")),
                        ),
                        "429": with_example(limited, _error_of(examples["429"])),
                        "503": with_example(unavailable, examples["503"]),
                    },
                }
            },
            "/files": {
                "post": {
                    "operationId": "uploadFile",
                    "summary": 'Try a scoped key: a route protected by `@require_api_key(scope="files:write")`',
                    "security": [{"bearer": []}],
                    "responses": {
                        "200": json_response(
                            {"type": "object"},
                            "The key may write files.",
                            RATE_HEADERS,
                            {"accepted": True, **_protected(examples["200"])},
                        ),
                        "400": with_example(bad_request, examples["400"]),
                        "401": json_response(
                            ref("Error"),
                            "Missing, malformed, unknown, revoked or expired key.",
                            example=_error_of(examples["401"]),
                        ),
                        "403": json_response(
                            ref("Error"),
                            "`insufficient_scope` (no `files:write`) or `ip_not_allowed`.",
                            example=_error_of(examples["403"]),
                        ),
                        "429": with_example(limited, _error_of(examples["429"])),
                        "503": with_example(unavailable, examples["503"]),
                    },
                }
            },
            "/keys/revoke": {
                "post": {
                    "operationId": "revokeLeakedKey",
                    "summary": "Revoke a key you hold, e.g. one you found in public (no authentication)",
                    "description": (
                        "The key is revoked at once and its organization's owners are told. The answer is the "
                        "same whether the key existed, was already revoked or never did. Throttled per client "
                        "address. See docs/secret-scanning.md."
                    ),
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": ref("RevokeRequest")}},
                    },
                    "responses": {
                        "202": json_response(
                            ref("Accepted"),
                            "Taken: if this was a working key, it no longer is.",
                            example={"status": "accepted"},
                        ),
                        "400": json_response(
                            ref("Error"),
                            "The body is not JSON with a `key` that looks like a key.",
                            example=error_body(
                                "invalid_request", 'Send a JSON body {"key": "pk_…"} with the key to revoke.'
                            ),
                        ),
                        "429": json_response(
                            ref("Error"),
                            "Too many requests from this address; retry later.",
                            ("Retry-After",),
                            error_body("rate_limited", "Too many revocation requests from this address; retry later."),
                        ),
                    },
                }
            },
            "/secret-scanning/report": {
                "post": {
                    "operationId": "secretScanningReport",
                    "summary": "GitHub secret scanning partner endpoint: tokens found in public",
                    "description": (
                        "The raw body must be signed (ECDSA P-256, SHA-256, base64 DER) with a key configured "
                        "in `SECRET_SCANNING_PUBLIC_KEYS`: headers `Github-Public-Key-Identifier` and "
                        "`Github-Public-Key-Signature`. Each key found is handled as its organization chose "
                        "(tell the owners, or revoke and tell them)."
                    ),
                    "parameters": [
                        {
                            "name": "Github-Public-Key-Identifier",
                            "in": "header",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                        {
                            "name": "Github-Public-Key-Signature",
                            "in": "header",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"type": "array", "items": ref("ReportedToken")}}},
                    },
                    "responses": {
                        "200": json_response(
                            {"type": "array", "items": ref("TokenLabel")},
                            "One label per reported token: `true_positive` for a ProCode key (live or revoked).",
                            example=[
                                {"token_raw": "pk_live_…", "token_type": "procode_api_key", "label": "true_positive"}
                            ],
                        ),
                        "400": json_response(
                            ref("Error"),
                            "Signed, but not a report.",
                            example=error_body("invalid_report", "The report must be a JSON array of tokens."),
                        ),
                        "401": json_response(
                            ref("Error"),
                            "Missing, unknown or invalid signature. Nothing changed.",
                            example=error_body(
                                "invalid_signature", "The report's signature does not verify with a configured key."
                            ),
                        ),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "responses": {"200": {"description": "OpenAPI 3.1 document"}},
                }
            },
        },
    }
