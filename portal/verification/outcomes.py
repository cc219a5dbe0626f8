"""What a verification can answer: the outcomes, their HTTP status and message, and the answer's shape.

Plain data with no Flask: the usage table's check constraint, the rollups, the OpenAPI document and both HTTP
paths (the WSGI fast path and ``@require_api_key``) all read the outcomes from here.
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring_ascii
from typing import Any, NamedTuple

# Every outcome a verification can be recorded with, in the order the rollups count them.
OUTCOMES: tuple[str, ...] = (
    "ok",
    "malformed",
    "unknown",
    "revoked",
    "expired",
    "rate_limited",
    "forbidden",
    "quota_exceeded",
)
# Answered without a lookup once the caller's address has spent its budget of malformed or unknown keys
# (:mod:`portal.verification.budget`). Not a usage outcome: like ``malformed`` and ``unknown`` it is only
# counted, per minute, client address and outcome (``api_invalid_key_counts``), never one row per call.
TOO_MANY_INVALID_KEYS = "too_many_invalid_keys"
INVALID_KEY_OUTCOMES: tuple[str, ...] = ("malformed", "unknown", TOO_MANY_INVALID_KEYS)

# What a gateway acts on: 200 lets the call through, 401 rejects the credential, 429 asks to retry later.
STATUS_BY_OUTCOME: dict[str, int] = {
    "ok": 200,
    "malformed": 401,
    "unknown": 401,
    "revoked": 401,
    "expired": 401,
    "rate_limited": 429,
    "forbidden": 403,
    "quota_exceeded": 429,
    TOO_MANY_INVALID_KEYS: 429,
}
MESSAGES: dict[str, str] = {
    "ok": "The key is valid.",
    "malformed": "This is not a ProCode API key (wrong prefix, length or checksum).",
    "unknown": "No such key.",
    "revoked": "This key has been revoked.",
    "expired": "This key has expired.",
    "rate_limited": "The rate limit for this minute is used up.",
    "forbidden": "This key may not make this call.",
    "quota_exceeded": "The organization's monthly quota is used up.",
    TOO_MANY_INVALID_KEYS: "Too many calls with malformed or unknown keys from this address; retry later.",
}
# A ``forbidden`` answer says why in its code; both are metered as the one outcome ``forbidden``.
REASONS: dict[str, str] = {
    "insufficient_scope": "The key does not have the scope this call needs.",
    "ip_not_allowed": "The key may not be used from this address.",
}
# Every ``code`` a verification answer can carry besides a valid one.
CODES: tuple[str, ...] = (*(o for o in OUTCOMES if o not in ("ok", "forbidden")), *REASONS, TOO_MANY_INVALID_KEYS)


class RateLimit(NamedTuple):
    limit: int
    remaining: int
    reset: int  # seconds until the window resets


class Verification(NamedTuple):
    """The answer to one verification: its outcome and, when the key exists, whose it is and its limit.

    Immutable: a named tuple rather than a frozen dataclass, which every call would build with four times the
    instructions (docs/performance.md).
    """

    outcome: str
    key_id: str | None = None
    organization_id: str | None = None
    organization_slug: str | None = None
    plan: str | None = None
    environment: str | None = None
    ratelimit: RateLimit | None = None
    reason: str | None = None  # why a ``forbidden`` call was refused: a key of REASONS
    scope: str | None = None  # the scope the call asked for
    scopes: list[str] | None = None  # the key's scopes; None = full access
    meta_json: str | None = None  # the key's metadata as the answer writes it (:func:`answer_json`); None = none
    external_id: str | None = None
    quota_reset: int | None = None  # seconds until the month's quota resets (quota_exceeded only)
    retry_after: int | None = None  # seconds until the address's budget of invalid keys resets

    @property
    def valid(self) -> bool:
        return self.outcome == "ok"

    @property
    def status_code(self) -> int:
        return STATUS_BY_OUTCOME[self.outcome]

    @property
    def code(self) -> str:
        return self.reason or self.outcome

    @property
    def message(self) -> str:
        return REASONS[self.reason] if self.reason else MESSAGES[self.outcome]

    @property
    def meta(self) -> dict[str, Any]:
        """The key's metadata (a new dict on each read)."""
        return json.loads(self.meta_json) if self.meta_json else {}

    def as_json(self) -> dict[str, Any]:
        """The documented answer body of ``POST /v1/keys/verify``."""
        if not self.valid:
            body: dict[str, Any] = {"valid": False, "code": self.code, "message": self.message}
        else:
            body = {
                "valid": True,
                "key_id": self.key_id,
                "organization": {
                    "id": self.organization_id,
                    "slug": self.organization_slug,
                    "plan": self.plan,
                },
                "environment": self.environment,
                "scopes": self.scopes,
                "meta": self.meta,
                "external_id": self.external_id,
            }
        if self.ratelimit is not None:
            rl = self.ratelimit
            body["ratelimit"] = {"limit": rl.limit, "remaining": rl.remaining, "reset": rl.reset}
        return body

    def answer_json(self) -> str:
        """:meth:`as_json` as compact JSON: ``json.dumps(self.as_json(), separators=(",", ":"))``, character for
        character. A valid answer, the one every admitted call gets, is written from its parts, its metadata
        already JSON: a quarter of the instructions of building and encoding the dict (docs/performance.md)."""
        if not self.valid:
            return compact_json(self.as_json())
        rl = self.ratelimit
        limit = ""
        if rl is not None:
            limit = f',"ratelimit":{{"limit":{rl.limit},"remaining":{rl.remaining},"reset":{rl.reset}}}'
        scopes = "null" if self.scopes is None else "[" + ",".join(map(_string, self.scopes)) + "]"
        return (
            f'{{"valid":true,"key_id":{_string(self.key_id)},"organization":{{"id":{_string(self.organization_id)},'
            f'"slug":{_string(self.organization_slug)},"plan":{_string(self.plan)}}},'
            f'"environment":{_string(self.environment)},"scopes":{scopes},"meta":{self.meta_json or "{}"},'
            f'"external_id":{_string(self.external_id)}{limit}}}'
        )

    def headers(self) -> dict[str, str]:
        """``RateLimit-*`` whenever the organization is known, ``Retry-After`` when rate limited."""
        headers: dict[str, str] = {}
        rl = self.ratelimit
        if rl is not None:
            headers["RateLimit-Limit"] = str(rl.limit)
            headers["RateLimit-Remaining"] = str(rl.remaining)
            headers["RateLimit-Reset"] = str(rl.reset)
            if self.outcome == "rate_limited":
                headers["Retry-After"] = str(rl.reset)
        if self.outcome == "quota_exceeded" and self.quota_reset is not None:
            headers["Retry-After"] = str(self.quota_reset)
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        if self.reason == "insufficient_scope":
            headers["WWW-Authenticate"] = f'Bearer error="insufficient_scope", scope="{self.scope}"'
        if self.status_code == 401:
            headers["WWW-Authenticate"] = f'Bearer error="invalid_token", error_description="{self.outcome}"'
        return headers


_COMPACT = json.JSONEncoder(separators=(",", ":"))


def compact_json(value: Any) -> str:
    """``json.dumps(value, separators=(",", ":"))``, with one encoder made once."""
    return _COMPACT.encode(value)


def _string(value: str | None) -> str:
    return "null" if value is None else encode_basestring_ascii(value)


class DatabaseUnavailable(Exception):
    """The verification could not reach PostgreSQL; answered 503, never recorded as a verification."""
