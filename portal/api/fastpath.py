"""``POST /v1/keys/verify`` answered at the WSGI layer, before Flask's per-request machinery.

Profiling showed a verification spending more CPU in Flask's request cycle (request context, URL matching,
opening and saving a cookie session, CSRF and sign-in hooks, teardown) than in its own work. None of that
applies to this endpoint: it has no session, no CSRF, no user. This middleware answers exactly that method and
path with :func:`portal.api.answer.answer_verify`, the same function the Flask view calls, reading the environ
directly and writing the status line and headers itself (no werkzeug request or response objects), and adds
the same security headers the app's ``after_request`` hook adds; every other request goes to Flask untouched.
``API_VERIFY_FAST_PATH = False`` turns it off (the Flask view then answers).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from flask import Flask

from portal.api import get_verifier
from portal.api.answer import answer_verify, error_answer
from portal.api.inputs import read_environ
from portal.security_headers import REQUEST_ID_HEADER, SECURITY_HEADERS, request_id

log = logging.getLogger("portal.api")
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

STATUS_LINES = {code: f"{code} {HTTPStatus(code).phrase}" for code in (200, 400, 401, 403, 429, 500, 503)}


class VerifyFastPath:
    def __init__(self, app: Flask, path: str = "/v1/keys/verify") -> None:
        self.app = app
        self.wsgi_app: WSGIApp = app.wsgi_app
        self.path = path
        self.enabled = True

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not self.enabled or environ.get("PATH_INFO") != self.path or environ.get("REQUEST_METHOD") != "POST":
            return self.wsgi_app(environ, start_response)
        try:
            status, headers, body = answer_verify(lambda: read_environ(environ), get_verifier(self.app))
        except Exception:
            log.exception("verification failed")
            status, headers, body = error_answer(500, "internal_error", "Something went wrong on our side.")
        rid = request_id(environ.get("HTTP_X_REQUEST_ID"))
        headers += [("Content-Length", str(len(body))), (REQUEST_ID_HEADER, rid), *SECURITY_HEADERS]
        start_response(STATUS_LINES.get(status) or f"{status} {HTTPStatus(status).phrase}", headers)
        return [body]
