"""``POST /v1/keys/verify`` answered at the WSGI layer, before Flask's per-request machinery.

Profiling showed a verification spending more CPU in Flask's request cycle (request context, URL matching,
opening and saving a cookie session, CSRF and sign-in hooks, teardown) than in its own work. None of that
applies to this endpoint: it has no session, no CSRF, no user. This middleware answers exactly that method and
path with :func:`portal.api.answer.answer_verify`, the same function the Flask view calls, reading the environ
directly and writing the status line and headers itself (no werkzeug request or response objects), and adds
the same security headers the app's ``after_request`` hook adds, and logs the request's line as the app does for
its own, buffered and written by the usage writer's flush (portal/logs.py; ``LOG_API_REQUESTS = False`` leaves /v1
calls out); every other request goes to Flask untouched.
A gateway's call (``GET``/``HEAD``/``POST /v1/keys/verify/gateway``, docs/gateways.md) is answered here too,
with :func:`portal.api.answer.answer_gateway`. ``API_VERIFY_FAST_PATH = False`` turns it off (the Flask views
then answer).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from flask import Flask

from portal.api import get_verifier
from portal.api.answer import Answer, answer_gateway, answer_verify, error_answer
from portal.api.inputs import GATEWAY_METHODS, RawGatewayRequest, header_variable, read_environ, read_gateway_environ
from portal.logs import request_lines
from portal.proxy import client_address
from portal.security_headers import REQUEST_ID_HEADER, SECURITY_HEADERS, request_id

log = logging.getLogger("portal.api")
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

STATUS_LINES = {code: f"{code} {HTTPStatus(code).phrase}" for code in (200, 400, 401, 403, 429, 500, 503)}


class VerifyFastPath:
    def __init__(
        self, app: Flask, path: str = "/v1/keys/verify", gateway_path: str = "/v1/keys/verify/gateway"
    ) -> None:
        self.app = app
        self.wsgi_app: WSGIApp = app.wsgi_app
        self.path = path
        self.gateway_path = gateway_path
        self.key_header: str | None = app.config.get("API_KEY_HEADER") or None
        self.key_variable = header_variable(self.key_header)
        # ProxyFix runs inside this middleware: the gateway's client address is read as it would read it.
        self.trust_proxy = bool(app.config.get("PORTAL_TRUST_PROXY"))
        self.log_requests = bool(app.config.get("LOG_API_REQUESTS", True))
        self.enabled = True

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not self.enabled or environ.get("PATH_INFO") != self.path or environ.get("REQUEST_METHOD") != "POST":
            return self._not_verify(environ, start_response)
        started = time.perf_counter()
        try:
            answer = answer_verify(lambda: read_environ(environ), get_verifier(self.app))
        except Exception:
            log.exception("verification failed")
            answer = error_answer(500, "internal_error", "Something went wrong on our side.")
        rid = _respond(environ, start_response, answer)
        if self.log_requests:
            duration = time.perf_counter() - started
            request_lines.add(rid, "POST", "api.verify", answer.status, duration, answer.organization_id)
        return [answer.body]

    def _not_verify(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        """A gateway's call, answered here too; anything else goes to Flask. Kept out of ``__call__`` so the
        benchmarked ``POST /v1/keys/verify`` does exactly the work it did before gateways were answered."""
        method = environ.get("REQUEST_METHOD")
        if not self.enabled or environ.get("PATH_INFO") != self.gateway_path or method not in GATEWAY_METHODS:
            return self.wsgi_app(environ, start_response)
        started = time.perf_counter()

        def read() -> RawGatewayRequest:
            return read_gateway_environ(environ, self.key_variable, client_address(environ, self.trust_proxy))

        try:
            answer = answer_gateway(read, get_verifier(self.app), self.key_header)
        except Exception:
            log.exception("gateway verification failed")
            answer = error_answer(500, "internal_error", "Something went wrong on our side.")
        rid = _respond(environ, start_response, answer)
        if self.log_requests:
            duration = time.perf_counter() - started
            request_lines.add(rid, method, "api.verify_gateway", answer.status, duration, answer.organization_id)
        return [b""] if method == "HEAD" else [answer.body]


def _respond(environ: dict[str, Any], start_response: Callable[..., Any], answer: Answer) -> str:
    """Start the response of an answer with the headers every page gets too; returns the request id."""
    status, headers, body = answer.status, answer.headers, answer.body
    rid = request_id(environ.get("HTTP_X_REQUEST_ID"))
    headers += [("Content-Length", str(len(body))), (REQUEST_ID_HEADER, rid), *SECURITY_HEADERS]
    start_response(STATUS_LINES.get(status) or f"{status} {HTTPStatus(status).phrase}", headers)
    return rid
