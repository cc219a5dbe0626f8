"""Error pages and JSON errors: a plain message and a request id, never a stack trace."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import sqlalchemy.exc
from flask import Flask, current_app, g, jsonify, render_template, request
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException, InternalServerError

from portal.security_headers import REQUEST_ID_HEADER
from portal.security_headers import request_id as new_request_id

log = logging.getLogger("portal.errors")
OUTAGE_RETRY_AFTER = "30"  # seconds: long enough for a restart or a failover, short enough to feel alive


def database_unavailable(error: BaseException) -> bool:
    """True for the errors of a database that cannot be reached (down, restarting, pool exhausted), as opposed
    to a bug in a query, which stays a 500."""
    if isinstance(error, sqlalchemy.exc.TimeoutError | sqlalchemy.exc.InterfaceError):
        return True
    if isinstance(error, sqlalchemy.exc.OperationalError):
        return True
    return isinstance(error, sqlalchemy.exc.DBAPIError) and error.connection_invalidated


def wants_json() -> bool:
    return request.path.startswith("/v1/") or request.accept_mimetypes.best == "application/json"


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    """``{"error": {"code", "message"}}``: the body of every JSON error, from the app and from /v1."""
    return {"error": {"code": code, "message": message}}


def json_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Any:
    response = jsonify(error_body(code, message))
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def register(app: Flask) -> None:
    @app.errorhandler(CSRFError)
    def csrf_error(error: CSRFError) -> Any:
        message = "The form expired or was sent from elsewhere. Reload the page and try again."
        if wants_json():
            return json_error(400, "csrf_failed", message)
        return render_template("errors/error.html", status=400, title="Form expired", message=message), 400

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Any:
        status = error.code or 500
        # A 405 says which methods the URL takes (RFC 9110), whichever body it comes with.
        allow = {name: value for name, value in error.get_headers() if name.lower() == "allow"}
        if wants_json():
            code = (error.name or "error").lower().replace(" ", "_")
            return json_error(status, code, error.description or error.name, allow)
        template = "errors/404.html" if status == 404 else "errors/error.html"
        return render_template(template, status=status, title=error.name, message=error.description), status, allow

    @app.errorhandler(Exception)
    def unexpected_error(error: Exception) -> Any:
        if isinstance(error, HTTPException):
            return http_error(error)
        if database_unavailable(error):
            return outage(error)
        log.exception("unhandled error (request id %s)", g.get("request_id", "-"))
        from portal.extensions import db

        db.session.rollback()
        message = "Something went wrong on our side. Quote the request id if you contact support."
        if wants_json():
            return json_error(500, "internal_error", message)
        return (
            render_template("errors/error.html", status=500, title=InternalServerError.name, message=message),
            500,
        )


def outage(error: BaseException) -> Any:
    """503 with ``Retry-After`` while the database is away: one log line (no traceback: the cause is known and
    every request would repeat it), and a page rendered without the database (it would fail again loading the
    signed-in user for the usual layout)."""
    if not g.get("request_id"):  # a hook that ran before the request id was given (the user loader) failed
        g.request_id = new_request_id(request.headers.get(REQUEST_ID_HEADER))
    request_id = g.request_id
    g.database_unavailable = True
    first_line = str(getattr(error, "orig", None) or error).strip().splitlines()[:1]
    # The route by endpoint name, as the request's own line names it: never the path, which can hold a mailed
    # one-time token (/password/reset/<token>, /invite/<token>), nor the query string.
    log.warning(
        "database unavailable (request id %s, %s %s): %s",
        request_id,
        request.method,
        request.endpoint or "-",
        first_line[0] if first_line else type(error).__name__,
    )
    from portal.extensions import db

    with contextlib.suppress(Exception):  # the connection is already gone; there is nothing to roll back
        db.session.rollback()
    headers = {"Retry-After": OUTAGE_RETRY_AFTER, "Cache-Control": "no-store"}
    message = "The service cannot reach its database right now. Try again shortly."
    if wants_json():
        return json_error(503, "service_unavailable", message, headers)
    # Straight from the Jinja environment: render_template would run the context processors, and Flask-Login's
    # would load the signed-in user from the database again.
    page = current_app.jinja_env.get_template("errors/unavailable.html").render(request_id=request_id)
    return page, 503, headers
