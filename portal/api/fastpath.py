"""``POST /v1/keys/verify`` answered at the WSGI layer, before Flask's per-request machinery.

Profiling showed a verification spending more CPU in Flask's request cycle (request context, URL matching,
opening and saving a cookie session, CSRF and sign-in hooks, teardown) than in its own work. None of that
applies to this endpoint: it has no session, no CSRF, no user. This middleware answers exactly that method and
path with :func:`portal.api.answer.answer_verify`, the same function the Flask view calls, and adds the same
security headers the app's ``after_request`` hook adds; every other request goes to Flask untouched.
``API_VERIFY_FAST_PATH = False`` turns it off (the Flask view then answers).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask
from werkzeug.wrappers import Request

from portal.api.answer import answer_verify, error_response
from portal.api.backend import SessionBackend
from portal.api.inputs import MAX_BODY_BYTES
from portal.api.services import Verifier

log = logging.getLogger("portal.api")
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

# The headers portal/__init__.py's harden_response sets on every non-HTML answer.
SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "same-origin"),
)


class ApiRequest(Request):
    """A plain werkzeug request that refuses to read more than a verification body can be."""

    max_content_length = MAX_BODY_BYTES


class VerifyFastPath:
    def __init__(self, app: Flask, verifier: Verifier, path: str = "/v1/keys/verify") -> None:
        self.app = app
        self.wsgi_app: WSGIApp = app.wsgi_app
        self.verifier = verifier
        self.path = path
        self.enabled = True
        # The session backend (tests) runs on db.session, which lives in an app context.
        self.needs_app_context = isinstance(verifier.backend, SessionBackend)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if (
            not self.enabled
            or environ.get("PATH_INFO") != self.path
            or environ.get("REQUEST_METHOD") != "POST"
        ):
            return self.wsgi_app(environ, start_response)
        request = ApiRequest(environ)
        try:
            if self.needs_app_context:
                with self.app.app_context():
                    response = answer_verify(request, self.verifier)
            else:
                response = answer_verify(request, self.verifier)
        except Exception:
            log.exception("verification failed")
            response = error_response(500, "internal_error", "Something went wrong on our side.")
        request_id = environ.get("HTTP_X_REQUEST_ID", "")[:64] or uuid.uuid4().hex
        response.headers["X-Request-ID"] = request_id
        for name, value in SECURITY_HEADERS:
            response.headers[name] = value
        return response(environ, start_response)
