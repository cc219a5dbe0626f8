"""The OpenAPI 3.1 document for ``/v1``, written by hand so it says what the code promises."""

from __future__ import annotations

from typing import Any

from flask import current_app

from portal.api import openapi_webhooks
from portal.api.answer import IDENTITY_HEADERS
from portal.api.inputs import (
    MAX_BODY_BYTES,
    MAX_CLIENT_IP_CHARS,
    MAX_ENDPOINT_CHARS,
    MAX_KEY_CHARS,
    MAX_USER_AGENT_CHARS,
)
from portal.errors import error_body
from portal.keys.policy import MAX_EXTERNAL_ID_CHARS, MAX_META_BYTES
from portal.plans import PLANS
from portal.scopes import SCOPES
from portal.verification.outcomes import CODES, RateLimit, Verification


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(
    schema: dict[str, Any], description: str, headers: tuple[str, ...] = (), example: Any = None
) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": schema}
    if example is not None:
        media["example"] = example
    answer: dict[str, Any] = {"description": description, "content": {"application/json": media}}
    if headers:
        answer["headers"] = {h: {"$ref": f"#/components/headers/{h}"} for h in headers}
    return answer


RATE_HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")

# Examples are answers the verification code itself renders (Verification.as_json, error_body), so the
# documentation cannot drift from what the API sends.
_KEY, _ORG = "5f0c2a4e-8d1b-4c3a-9e7f-2b6d1a0c9e84", "0b7e9d52-3c4f-4a1e-8f6b-7d2c5e9a1f03"
_LIMIT = RateLimit(limit=1000, remaining=987, reset=42)


def _with_example(answer: dict[str, Any], example: Any) -> dict[str, Any]:
    """``answer`` (a shared response object) with an example of its own."""
    media = {**answer["content"]["application/json"], "example": example}
    return {**answer, "content": {"application/json": media}}


def _protected(valid: dict[str, Any]) -> dict[str, Any]:
    """A protected route's 200 body: the verification's answer without ``valid``."""
    return {k: v for k, v in valid.items() if k != "valid"}


def _error_of(invalid: dict[str, Any]) -> dict[str, Any]:
    """The ``{"error": {"code", "message"}}`` body a protected route answers for a refused key."""
    return error_body(invalid["code"], invalid["message"])


def _answer(outcome: str, **fields: Any) -> dict[str, Any]:
    fields.setdefault("ratelimit", _LIMIT)
    return Verification(outcome, _KEY, _ORG, "acme", "pro", "live", **fields).as_json()


def _examples() -> dict[str, Any]:
    return {
        "200": _answer("ok", scopes=["translate:write"], meta_json='{"customer":"cus_1042"}', external_id="tenant-7"),
        "400": error_body("invalid_json", "The body is not valid JSON (UTF-8)."),
        "401": _answer("revoked"),
        "403": _answer("forbidden", reason="insufficient_scope", scope="files:write", scopes=["translate:write"]),
        "429": _answer("rate_limited", ratelimit=RateLimit(limit=1000, remaining=0, reset=17)),
        "503": error_body("unavailable", "Key verification is unavailable; retry shortly."),
    }


LIMITS = ", ".join(f"{p.label} {p.requests_per_minute}/min" for p in PLANS.values())


def _schemas() -> dict[str, Any]:
    return {
        "VerifyRequest": {
            "type": "object",
            "properties": {
                "key": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": MAX_KEY_CHARS,
                    "description": "The key to check, `pk_test_…` or `pk_live_…`. May be sent as "
                    "`Authorization: Bearer <key>` instead.",
                },
                "endpoint": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": MAX_ENDPOINT_CHARS,
                    "pattern": f"^[ -~]{{1,{MAX_ENDPOINT_CHARS}}}$",
                    "description": f"The ProCode API route being called, kept on the usage record: 1 to "
                    f"{MAX_ENDPOINT_CHARS} printable ASCII characters (percent-encode anything else, as in an "
                    "HTTP path). Anything else: 400 `invalid_endpoint`.",
                },
                "scope": {
                    "type": "string",
                    "enum": list(SCOPES),
                    "description": "The permission the call needs. A restricted key without it is refused: 403 "
                    "`insufficient_scope`. A full-access key has every scope. Unknown names: 400 `invalid_scope`.",
                },
                "client_ip": {
                    "type": "string",
                    "maxLength": MAX_CLIENT_IP_CHARS,
                    "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}],
                    "description": "The address of the client calling your API. A key with an IP allowlist is "
                    "refused (403 `ip_not_allowed`) from any other address, and also when `client_ip` is "
                    "missing. Keys without an allowlist ignore it. It is also the address whose calls with "
                    "malformed or unknown keys are budgeted (429 `too_many_invalid_keys`); without it, the "
                    "address of the caller is, so a gateway should send it. Not an address: 400 "
                    "`invalid_client_ip`. Recorded on the call's usage record: the key page lists the addresses "
                    "that use it.",
                },
                "user_agent": {
                    "type": "string",
                    "maxLength": MAX_USER_AGENT_CHARS,
                    "description": "The `User-Agent` of the client calling your API, recorded with `client_ip` "
                    "(the first 256 characters) so the key page can show which clients use the key. Not "
                    "printable text, or longer: 400 `invalid_user_agent`.",
                },
            },
        },
        "RateLimit": {
            "type": "object",
            "required": ["limit", "remaining", "reset"],
            "properties": {
                "limit": {
                    "type": "integer",
                    "description": f"Calls per minute for the key: the plan's ({LIMITS}), or the key's own "
                    "limit when it is lower. Test and live keys have separate minutes, each with the plan's "
                    "limit, so test traffic never throttles live calls.",
                },
                "remaining": {"type": "integer", "description": "Calls left in the current minute."},
                "reset": {
                    "type": "integer",
                    "description": "Seconds until the current minute's window resets.",
                },
            },
        },
        "Organization": {
            "type": "object",
            "properties": {
                "id": {"type": "string", "format": "uuid"},
                "slug": {"type": "string"},
                "plan": {"type": "string", "enum": list(PLANS)},
            },
        },
        "Valid": {
            "type": "object",
            "required": [
                "valid",
                "key_id",
                "organization",
                "environment",
                "scopes",
                "meta",
                "external_id",
                "ratelimit",
            ],
            "properties": {
                "valid": {"const": True},
                "key_id": {"type": "string", "format": "uuid"},
                "organization": _ref("Organization"),
                "environment": {"type": "string", "enum": ["test", "live"]},
                "scopes": {
                    "type": ["array", "null"],
                    "items": {"type": "string", "enum": list(SCOPES)},
                    "description": "The key's scopes; null for a full-access key.",
                },
                "meta": {
                    "type": "object",
                    "description": f"The key's metadata, as set in the portal (a JSON object, at most "
                    f"{MAX_META_BYTES} bytes).",
                },
                "external_id": {
                    "type": ["string", "null"],
                    "maxLength": MAX_EXTERNAL_ID_CHARS,
                    "description": "Your own identifier for the key, if set.",
                },
                "ratelimit": _ref("RateLimit"),
            },
        },
        "Invalid": {
            "type": "object",
            "required": ["valid", "code"],
            "properties": {
                "valid": {"const": False},
                "code": {
                    "type": "string",
                    "enum": list(CODES),
                },
                "message": {"type": "string"},
                "ratelimit": _ref("RateLimit"),
            },
        },
        "RevokeRequest": {
            "type": "object",
            "required": ["key"],
            "properties": {
                "key": {
                    "type": "string",
                    "pattern": "^pk_[0-9A-Za-z_]{1,120}$",
                    "description": "The key to revoke, `pk_test_…` or `pk_live_…`.",
                }
            },
        },
        "Accepted": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"const": "accepted"}},
        },
        "ReportedToken": {
            "type": "object",
            "required": ["token"],
            "properties": {
                "token": {"type": "string", "description": "The string found, expected to be a ProCode key."},
                "type": {"type": "string", "description": "The partner's name for the token type."},
                "url": {"type": "string", "description": "Where it was found, publicly."},
                "source": {"type": "string", "description": "What kind of place (content, commit, issue …)."},
            },
        },
        "TokenLabel": {
            "type": "object",
            "required": ["token_raw", "token_type", "label"],
            "properties": {
                "token_raw": {"type": "string"},
                "token_type": {"type": "string"},
                "label": {"type": "string", "enum": ["true_positive", "false_positive"]},
            },
        },
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                }
            },
        },
    }


IDENTITY_DESCRIPTIONS = {
    "X-ProCode-Organization": "The key's organization id (a UUID).",
    "X-ProCode-Organization-Slug": "The organization's slug.",
    "X-ProCode-Plan": "The organization's plan.",
    "X-ProCode-Key-Id": "The key's id (a UUID).",
    "X-ProCode-Environment": "`test` or `live`.",
    "X-ProCode-Scopes": "The key's scopes, space-separated; `*` for a full-access key.",
}


def _headers() -> dict[str, Any]:
    integer = {"schema": {"type": "integer"}}
    identity = {
        name: {"schema": {"type": "string"}, "required": True, "description": IDENTITY_DESCRIPTIONS[name]}
        for name in IDENTITY_HEADERS
    }
    return {
        **identity,
        "RateLimit-Limit": {**integer, "description": "The organization's calls per minute."},
        "RateLimit-Remaining": {**integer, "description": "Calls left in the current window."},
        "RateLimit-Reset": {**integer, "description": "Seconds until the window resets."},
        "Retry-After": {
            **integer,
            "description": "Seconds to wait before retrying (429 and 503 only): until the minute's window "
            "resets (`rate_limited`, `too_many_invalid_keys`), or until the month ends (UTC) for "
            "`quota_exceeded`.",
        },
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


def _security_schemes(key_header: str | None) -> dict[str, Any]:
    schemes: dict[str, Any] = {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "pk_{test|live}_…"}}
    if key_header:
        schemes["apiKeyHeader"] = {
            "type": "apiKey",
            "in": "header",
            "name": key_header,
            "description": "The key in the header named by `API_KEY_HEADER` (gateway calls only).",
        }
    return schemes


def _header_parameter(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": False, "schema": {"type": "string"}, "description": description}


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
            _header_parameter("X-Forwarded-Uri", "The forwarded call's URI (Caddy, Traefik)."),
            _header_parameter("X-Original-URI", "The forwarded call's URI when X-Forwarded-Uri is absent (nginx)."),
            _header_parameter("X-Forwarded-Method", "The forwarded call's method."),
            _header_parameter("X-Original-Method", "The forwarded call's method when X-Forwarded-Method is absent."),
            _header_parameter("X-Forwarded-For", "The client's address, read with `PORTAL_TRUST_PROXY=1`."),
        ],
        "responses": {
            "200": _json(
                _ref("Valid"),
                "The key is valid and the call was admitted: copy the `X-ProCode-*` headers onto the forwarded "
                "request.",
                (*RATE_HEADERS, *IDENTITY_HEADERS),
            ),
            "400": _json(_ref("Error"), "The gateway's configuration is wrong: an unknown `scope`. Not metered."),
            "401": _json(
                {"oneOf": [_ref("Invalid"), _ref("Error")]},
                'No key (`missing_key`, with `WWW-Authenticate: Bearer realm="procode"`; not metered), two '
                "different keys (`conflicting_keys`; not metered), or a malformed, unknown, revoked or expired key "
                '(`WWW-Authenticate: Bearer error="invalid_token"`).',
                RATE_HEADERS,
            ),
            "403": _json(_ref("Invalid"), "`insufficient_scope` or `ip_not_allowed`.", RATE_HEADERS),
            "429": _json(_ref("Invalid"), "Rate limited or over quota.", (*RATE_HEADERS, "Retry-After")),
            "503": unavailable,
        },
    }
    examples = {**_examples(), "400": error_body("invalid_scope", "'scope' must be one of the ProCode API scopes.")}
    responses: dict[str, Any] = operation["responses"]
    for status, answer in responses.items():
        responses[status] = _with_example(answer, examples[status])
    return operation


def openapi_document() -> dict[str, Any]:
    bad_request = _json(
        _ref("Error"),
        "Not a verification request (not JSON, wrong content type, missing or "
        "oversized field, non-string or non-ASCII key or endpoint). Not metered.",
    )
    limited = _json(
        _ref("Error"),
        "Rate limited or over quota, or `too_many_invalid_keys`: the caller's address spent its budget of "
        "malformed or unknown keys.",
        (*RATE_HEADERS, "Retry-After"),
    )
    unavailable = _json(
        _ref("Error"),
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
            "schemas": {**_schemas(), **openapi_webhooks.schemas()},
            "headers": _headers(),
            "parameters": openapi_webhooks.parameters(),
            "securitySchemes": _security_schemes(current_app.config.get("API_KEY_HEADER") or None),
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
                        "content": {"application/json": {"schema": _ref("VerifyRequest")}},
                    },
                    "responses": {
                        "200": _json(
                            _ref("Valid"),
                            "The key is valid and the call was admitted.",
                            RATE_HEADERS,
                            examples["200"],
                        ),
                        "400": _with_example(bad_request, examples["400"]),
                        "401": _json(
                            _ref("Invalid"),
                            "Malformed, unknown, revoked or expired key "
                            '(`WWW-Authenticate: Bearer error="invalid_token"`).',
                            RATE_HEADERS,
                            examples["401"],
                        ),
                        "403": _json(
                            _ref("Invalid"),
                            "Valid key, but its policy refuses this call: `insufficient_scope` (with "
                            '`WWW-Authenticate: Bearer error="insufficient_scope", scope="…"`) or '
                            "`ip_not_allowed`. Metered as outcome `forbidden`; nothing is counted against the "
                            "limits.",
                            RATE_HEADERS,
                            examples["403"],
                        ),
                        "429": _json(
                            _ref("Invalid"),
                            "Valid key, but the organization's or the key's limit for this minute is used up "
                            "(`rate_limited`), or, on the Free plan, the monthly quota (`quota_exceeded`); or "
                            "the client's address has spent its budget of malformed or unknown keys "
                            "(`too_many_invalid_keys`, any key, no lookup, no rate-limit headers).",
                            (*RATE_HEADERS, "Retry-After"),
                            examples["429"],
                        ),
                        "503": _with_example(unavailable, examples["503"]),
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
                        "200": _json(
                            {"type": "object"},
                            "Who the key belongs to, and its rate limit.",
                            RATE_HEADERS,
                            _protected(examples["200"]),
                        ),
                        "400": _with_example(bad_request, examples["400"]),
                        "401": _json(
                            _ref("Error"),
                            "Missing, malformed, unknown, revoked or expired key.",
                            example=_error_of(examples["401"]),
                        ),
                        "403": _json(
                            _ref("Error"),
                            "The key's IP allowlist does not include the caller.",
                            example=_error_of(_answer("forbidden", reason="ip_not_allowed")),
                        ),
                        "429": _with_example(limited, _error_of(examples["429"])),
                        "503": _with_example(unavailable, examples["503"]),
                    },
                }
            },
            "/files": {
                "post": {
                    "operationId": "uploadFile",
                    "summary": 'Try a scoped key: a route protected by `@require_api_key(scope="files:write")`',
                    "security": [{"bearer": []}],
                    "responses": {
                        "200": _json(
                            {"type": "object"},
                            "The key may write files.",
                            RATE_HEADERS,
                            {"accepted": True, **_protected(examples["200"])},
                        ),
                        "400": _with_example(bad_request, examples["400"]),
                        "401": _json(
                            _ref("Error"),
                            "Missing, malformed, unknown, revoked or expired key.",
                            example=_error_of(examples["401"]),
                        ),
                        "403": _json(
                            _ref("Error"),
                            "`insufficient_scope` (no `files:write`) or `ip_not_allowed`.",
                            example=_error_of(examples["403"]),
                        ),
                        "429": _with_example(limited, _error_of(examples["429"])),
                        "503": _with_example(unavailable, examples["503"]),
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
                        "content": {"application/json": {"schema": _ref("RevokeRequest")}},
                    },
                    "responses": {
                        "202": _json(
                            _ref("Accepted"),
                            "Taken: if this was a working key, it no longer is.",
                            example={"status": "accepted"},
                        ),
                        "400": _json(
                            _ref("Error"),
                            "The body is not JSON with a `key` that looks like a key.",
                            example=error_body(
                                "invalid_request", 'Send a JSON body {"key": "pk_…"} with the key to revoke.'
                            ),
                        ),
                        "429": _json(
                            _ref("Error"),
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
                        "content": {"application/json": {"schema": {"type": "array", "items": _ref("ReportedToken")}}},
                    },
                    "responses": {
                        "200": _json(
                            {"type": "array", "items": _ref("TokenLabel")},
                            "One label per reported token: `true_positive` for a ProCode key (live or revoked).",
                            example=[
                                {"token_raw": "pk_live_…", "token_type": "procode_api_key", "label": "true_positive"}
                            ],
                        ),
                        "400": _json(
                            _ref("Error"),
                            "Signed, but not a report.",
                            example=error_body("invalid_report", "The report must be a JSON array of tokens."),
                        ),
                        "401": _json(
                            _ref("Error"),
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
