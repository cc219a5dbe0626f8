"""Error pages and JSON errors: a plain message and a request id, never a stack trace."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, g, jsonify, render_template, request
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException, InternalServerError

log = logging.getLogger("portal.errors")


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
