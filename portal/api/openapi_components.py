"""The reusable parts of the OpenAPI document for ``/v1``: its component schemas, headers and security schemes,
and the helpers that build responses and parameters pointing at them (``ref``, ``json_response``)."""

from __future__ import annotations

from typing import Any

from portal.api.answer import IDENTITY_HEADERS
from portal.api.inputs import MAX_CLIENT_IP_CHARS, MAX_ENDPOINT_CHARS, MAX_KEY_CHARS, MAX_USER_AGENT_CHARS
from portal.keys.policy import MAX_EXTERNAL_ID_CHARS, MAX_META_BYTES
from portal.plans import PLANS
from portal.scopes import SCOPES
from portal.verification.outcomes import CODES


def ref(name: str) -> dict[str, str]:
    """A ``$ref`` to a component schema, so each shape is written once and named in the document."""
    return {"$ref": f"#/components/schemas/{name}"}


def json_response(
    schema: dict[str, Any], description: str, headers: tuple[str, ...] = (), example: Any = None
) -> dict[str, Any]:
    """A JSON response whose headers point at the shared header components, so every route documents them alike."""
    media: dict[str, Any] = {"schema": schema}
    if example is not None:
        media["example"] = example
    answer: dict[str, Any] = {"description": description, "content": {"application/json": media}}
    if headers:
        answer["headers"] = {h: {"$ref": f"#/components/headers/{h}"} for h in headers}
    return answer


RATE_HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")


def with_example(answer: dict[str, Any], example: Any) -> dict[str, Any]:
    """``answer`` (a shared response object) with an example of its own, so routes share it yet show their own."""
    media = {**answer["content"]["application/json"], "example": example}
    return {**answer, "content": {"application/json": media}}


LIMITS = ", ".join(f"{p.label} {p.requests_per_minute}/min" for p in PLANS.values())


def api_schemas() -> dict[str, Any]:
    """The API's component schemas, built from the limits and outcomes the code enforces so they cannot drift."""
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
                "organization": ref("Organization"),
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
                "ratelimit": ref("RateLimit"),
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
                "ratelimit": ref("RateLimit"),
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


def response_headers() -> dict[str, Any]:
    """The headers answers carry (identity, rate limit, ``Retry-After``), described once for every response."""
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


def security_schemes(key_header: str | None) -> dict[str, Any]:
    """How a key may be sent: bearer always, and the deployment's own header when ``API_KEY_HEADER`` names one."""
    schemes: dict[str, Any] = {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "pk_{test|live}_…"}}
    if key_header:
        schemes["apiKeyHeader"] = {
            "type": "apiKey",
            "in": "header",
            "name": key_header,
            "description": "The key in the header named by `API_KEY_HEADER` (gateway calls only).",
        }
    return schemes


def header_parameter(name: str, description: str) -> dict[str, Any]:
    """An optional string header parameter, the shape of every header a gateway forwards."""
    return {"name": name, "in": "header", "required": False, "schema": {"type": "string"}, "description": description}
