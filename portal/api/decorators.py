"""``@require_api_key``: the same verification as ``POST /v1/keys/verify``, in-process, for any Flask view."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

from flask import after_this_request, g, request

from portal.api import get_verifier
from portal.api.inputs import BadRequest, bearer_token, peer_address
from portal.errors import json_error
from portal.scopes import SCOPE_SET
from portal.verification.outcomes import DatabaseUnavailable, Verification

F = TypeVar("F", bound=Callable[..., Any])


def check_request_key(scope: str | None = None) -> Verification | Any:
    """Verify the request's bearer key for ``scope``; the verification when it passes, else the error response.

    The client address is ``request.remote_addr`` (the forwarded one behind ``PORTAL_TRUST_PROXY``): what a
    key's allowlist checks and what spends a budget of invalid keys (429 ``too_many_invalid_keys`` once spent).
    It is recorded on the usage row with the request's ``User-Agent``."""
    started = time.perf_counter()
    try:
        token = bearer_token(request)
    except BadRequest as exc:
        return json_error(400, exc.code, exc.message)
    if token is None:
        return json_error(
            401,
            "missing_key",
            "Send your key as 'Authorization: Bearer <key>'.",
            {"WWW-Authenticate": 'Bearer realm="procode"'},
        )
    endpoint = request.url_rule.rule[:200] if request.url_rule is not None else None
    ip = peer_address(request.remote_addr)  # None for a unix socket peer: a key with an allowlist refuses it
    try:
        agent = request.headers.get("User-Agent")
        result = get_verifier().verify(token, endpoint, started, scope=scope, ip=ip, user_agent=agent)
    except DatabaseUnavailable:
        return json_error(503, "unavailable", "Key verification is unavailable; retry shortly.", {"Retry-After": "1"})
    if not result.valid:
        return json_error(result.status_code, result.code, result.message, result.headers())
    return result


def require_api_key(view: F | None = None, *, scope: str | None = None) -> Any:
    """Let the view run only for a valid, non-rate-limited key; ``g.api_key`` holds the verification.

    ``@require_api_key`` accepts any valid key; ``@require_api_key(scope="files:write")`` also needs a key
    that is full-access or has that scope (403 ``insufficient_scope`` otherwise). Every call that reaches the
    check is metered like a ``/v1/keys/verify`` call (endpoint = the route rule), and the answer carries the
    same ``RateLimit-*`` headers.
    """
    if scope is not None and scope not in SCOPE_SET:
        raise ValueError(f"unknown scope {scope!r}; see portal/scopes.py")

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            outcome = check_request_key(scope)
            if not isinstance(outcome, Verification):
                return outcome
            g.api_key = outcome
            headers = outcome.headers()

            @after_this_request
            def add_headers(response: Any) -> Any:
                for name, value in headers.items():
                    response.headers.setdefault(name, value)
                return response

            return view(*args, **kwargs)

        return cast(F, wrapper)

    return decorate(view) if view is not None else decorate


__all__ = ["require_api_key", "check_request_key"]
