"""What a verification can answer: the outcomes, their HTTP status and message, and the answer's shape.

Plain data with no Flask: the usage table's check constraint, the rollups, the OpenAPI document and both HTTP
paths (the WSGI fast path and ``@require_api_key``) all read the outcomes from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Every outcome a verification can be recorded with, in the order the rollups count them.
OUTCOMES: tuple[str, ...] = ("ok", "malformed", "unknown", "revoked", "expired", "rate_limited")

# What a gateway acts on: 200 lets the call through, 401 rejects the credential, 429 asks to retry later.
STATUS_BY_OUTCOME: dict[str, int] = {
    "ok": 200,
    "malformed": 401,
    "unknown": 401,
    "revoked": 401,
    "expired": 401,
    "rate_limited": 429,
}
MESSAGES: dict[str, str] = {
    "ok": "The key is valid.",
    "malformed": "This is not a ProCode API key (wrong prefix, length or checksum).",
    "unknown": "No such key.",
    "revoked": "This key has been revoked.",
    "expired": "This key has expired.",
    "rate_limited": "The organization's rate limit for this minute is used up.",
}


@dataclass(frozen=True, slots=True)
class RateLimit:
    limit: int
    remaining: int
    reset: int  # seconds until the window resets


@dataclass(frozen=True, slots=True)
class Verification:
    """The answer to one verification: its outcome and, when the key exists, whose it is and its limit."""

    outcome: str
    key_id: str | None = None
    organization_id: str | None = None
    organization_slug: str | None = None
    plan: str | None = None
    environment: str | None = None
    ratelimit: RateLimit | None = None

    @property
    def valid(self) -> bool:
        return self.outcome == "ok"

    @property
    def status_code(self) -> int:
        return STATUS_BY_OUTCOME[self.outcome]

    @property
    def message(self) -> str:
        return MESSAGES[self.outcome]

    def as_json(self) -> dict[str, Any]:
        """The documented answer body of ``POST /v1/keys/verify``."""
        if not self.valid:
            body: dict[str, Any] = {"valid": False, "code": self.outcome, "message": self.message}
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
            }
        if self.ratelimit is not None:
            rl = self.ratelimit
            body["ratelimit"] = {"limit": rl.limit, "remaining": rl.remaining, "reset": rl.reset}
        return body

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
        if self.status_code == 401:
            headers["WWW-Authenticate"] = f'Bearer error="invalid_token", error_description="{self.outcome}"'
        return headers


class DatabaseUnavailable(Exception):
    """The verification could not reach PostgreSQL; answered 503, never recorded as a verification."""
