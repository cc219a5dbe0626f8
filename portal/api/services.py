"""Verify an API key: the one function behind ``POST /v1/keys/verify`` and ``@require_api_key``.

A malformed key is answered from its format alone (no database); any other key costs one prepared statement
(lookup, status, rate-limit upsert) and one buffered usage row. Every answered verification, valid or not,
becomes exactly one ``api_key_usage`` row; requests that are not verifications (bad input) never do.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask import Flask, current_app

from portal.api.backend import Backend, DirectBackend, SessionBackend, libpq_dsn
from portal.api.recorder import BufferedRecorder, ImmediateRecorder, UsageRecorder
from portal.keys import format as keyformat

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
EXTENSION = "portal.verifier"


@dataclass(frozen=True, slots=True)
class RateLimit:
    limit: int
    remaining: int
    reset: int  # seconds until the window resets


@dataclass(frozen=True, slots=True)
class Verification:
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

    def as_json(self) -> dict[str, Any]:
        """The documented answer body of ``POST /v1/keys/verify``."""
        if not self.valid:
            body: dict[str, Any] = {"valid": False, "code": self.outcome, "message": MESSAGES[self.outcome]}
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


class Verifier:
    """Per-app state: where the statement runs and where usage rows go."""

    def __init__(self, backend: Backend, recorder: UsageRecorder, pepper: str) -> None:
        self.backend = backend
        self.recorder = recorder
        self.pepper = pepper

    def verify(self, candidate: object, endpoint: str | None, started: float | None = None) -> Verification:
        """Check ``candidate`` and record the answer; ``started`` (``perf_counter``) times the latency."""
        started = time.perf_counter() if started is None else started
        parsed = keyformat.parse(candidate)
        if parsed is None:
            result, at = Verification("malformed"), datetime.now(UTC)
        else:
            row = self.backend.verify(keyformat.key_hash(parsed.key, self.pepper))
            result, at = _from_row(row) if row is not None else (Verification("unknown"), datetime.now(UTC))
        latency_ms = round((time.perf_counter() - started) * 1000.0, 3)
        self.recorder.add(
            (
                result.key_id,
                result.organization_id,
                at,
                endpoint,
                result.status_code,
                latency_ms,
                result.outcome,
            )
        )
        return result

    def close(self) -> None:
        """Flush buffered usage and close connections: called when a worker stops."""
        self.recorder.close()
        self.backend.close()


def _from_row(row: tuple[Any, ...]) -> tuple[Verification, datetime]:
    key_id, org_id, slug, plan, environment, status, limit, used, reset_in, at = row
    outcome = "rate_limited" if status == "ok" and used > limit else status
    ratelimit = RateLimit(limit=limit, remaining=max(0, limit - used), reset=max(1, math.ceil(reset_in)))
    return Verification(outcome, key_id, org_id, slug, plan, environment, ratelimit), at


def init_app(app: Flask) -> Verifier:
    """Choose the backend from ``API_VERIFY_BACKEND`` (``direct`` or ``session``) and attach the verifier."""
    pepper = str(app.config["API_KEY_PEPPER"])
    if app.config.get("API_VERIFY_BACKEND", "direct") == "session":
        verifier = Verifier(SessionBackend(), ImmediateRecorder(), pepper)
    else:
        dsn = libpq_dsn(app.config["SQLALCHEMY_DATABASE_URI"])
        recorder = BufferedRecorder(dsn, interval=float(app.config.get("API_USAGE_FLUSH_INTERVAL", 0.2)))
        verifier = Verifier(DirectBackend(dsn), recorder, pepper)
    app.extensions[EXTENSION] = verifier
    return verifier


def get_verifier(app: Flask | None = None) -> Verifier:
    return (app or current_app).extensions[EXTENSION]  # type: ignore[no-any-return]


def verify(candidate: object, endpoint: str | None = None, started: float | None = None) -> Verification:
    """Verify ``candidate`` with the current app's verifier (see :meth:`Verifier.verify`)."""
    return get_verifier().verify(candidate, endpoint, started)
