"""``POST /v1/keys/verify`` answered at the WSGI layer, before Flask's per-request machinery.

Profiling showed a verification spending more CPU in Flask's request cycle (request context, URL matching,
opening and saving a cookie session, CSRF and sign-in hooks, teardown) than in its own work. None of that
applies to this endpoint: it has no session, no CSRF, no user. This middleware answers exactly that method and
path with :func:`portal.api.answer.answer_verify`, the same function the Flask view calls, reading the environ
directly and writing the status line and headers itself (no werkzeug request or response objects), and adds
the same security headers the app's ``after_request`` hook adds; every other request goes to Flask untouched.
A gateway's call (``GET``/``HEAD``/``POST /v1/keys/verify/gateway``, docs/gateways.md) is answered here too,
with :func:`portal.api.answer.answer_gateway`. ``API_VERIFY_FAST_PATH = False`` turns it off (the Flask views
then answer).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from flask import Flask

from portal.api import get_verifier
from portal.api.answer import Answer, answer_gateway, answer_verify, error_answer
from portal.api.inputs import GATEWAY_METHODS, RawGatewayRequest, header_variable, read_environ, read_gateway_environ
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
        self.enabled = True

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not self.enabled or environ.get("PATH_INFO") != self.path or environ.get("REQUEST_METHOD") != "POST":
            return self._not_verify(environ, start_response)
        try:
            answer = answer_verify(lambda: read_environ(environ), get_verifier(self.app))
        except Exception:
            log.exception("verification failed")
            answer = error_answer(500, "internal_error", "Something went wrong on our side.")
        return [_respond(environ, start_response, answer)]

    def _not_verify(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        """A gateway's call, answered here too; anything else goes to Flask. Kept out of ``__call__`` so the
        benchmarked ``POST /v1/keys/verify`` does exactly the work it did before gateways were answered."""
        method = environ.get("REQUEST_METHOD")
        if not self.enabled or environ.get("PATH_INFO") != self.gateway_path or method not in GATEWAY_METHODS:
            return self.wsgi_app(environ, start_response)

        def read() -> RawGatewayRequest:
            return read_gateway_environ(environ, self.key_variable, client_address(environ, self.trust_proxy))

        try:
            answer = answer_gateway(read, get_verifier(self.app), self.key_header)
        except Exception:
            log.exception("gateway verification failed")
            answer = error_answer(500, "internal_error", "Something went wrong on our side.")
        body = _respond(environ, start_response, answer)
        return [b""] if method == "HEAD" else [body]


def _respond(environ: dict[str, Any], start_response: Callable[..., Any], answer: Answer) -> bytes:
    """Start the response of an answer with the headers every page gets too; the body to send."""
    status, headers, body = answer
    rid = request_id(environ.get("HTTP_X_REQUEST_ID"))
    headers += [("Content-Length", str(len(body))), (REQUEST_ID_HEADER, rid), *SECURITY_HEADERS]
    start_response(STATUS_LINES.get(status) or f"{status} {HTTPStatus(status).phrase}", headers)
    return body
