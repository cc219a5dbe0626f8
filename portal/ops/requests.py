"""Every Flask request: one log line (portal/logs.py) and its latency in the page histogram, by endpoint name.
The pool gauge follows the SQLAlchemy pool's checkouts."""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa
from flask import Flask, current_app, g, request

from portal import metrics
from portal.logs import log_request

METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))


def init_app(app: Flask) -> None:
    @app.after_request
    def record_request(response: Any) -> Any:
        started = g.get("request_started")
        duration = time.perf_counter() - started if started is not None else 0.0
        endpoint = request.endpoint
        method = request.method if request.method in METHODS else "OTHER"  # made-up methods share one label
        metrics.PAGE_SECONDS.labels(endpoint or "unmatched", method).observe(duration)
        if request.blueprint != "api" or current_app.config["LOG_API_REQUESTS"]:
            log_request(
                g.get("request_id", "-"),
                method,
                endpoint,
                response.status_code,
                duration,
                _user_id(),
                _organization_id(),
            )
        return response

    track_pool(app)


def _user_id() -> Any:
    """The signed-in user's id if this request loaded one (never loads it just for the log)."""
    user = g.get("_login_user")  # where Flask-Login keeps the request's user once loaded
    return _row_id(user) if user is not None and getattr(user, "is_authenticated", False) else None


def _organization_id() -> Any:
    """The organization the request acted in: an /orgs page's, or an API key's."""
    org = g.get("org")
    if org is not None:
        return _row_id(org)
    key = g.get("api_key")  # @require_api_key
    if key is not None:
        return key.organization_id
    return g.get("organization_id")  # a /v1 view that knows it otherwise


def _row_id(row: Any) -> Any:
    """A model's primary key from its identity: no query, even when a commit expired the row or deleted it."""
    try:
        identity = sa.inspect(row).identity
    except sa.exc.NoInspectionAvailable:
        return getattr(row, "id", None)
    return identity[0] if identity else None


def track_pool(app: Flask) -> None:
    """Keep ``procode_db_pool_connections_in_use`` at this process's checked-out connections."""
    from sqlalchemy import event

    from portal.extensions import db

    with app.app_context():
        engines = list(db.engines.values())
    for engine in engines:
        event.listen(engine.pool, "checkout", _checked_out)
        event.listen(engine.pool, "checkin", _checked_in)
        event.listen(engine.pool, "detach", _detached)


def _checked_out(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    metrics.DB_POOL_IN_USE.inc()


def _checked_in(dbapi_connection: Any, record: Any) -> None:
    metrics.DB_POOL_IN_USE.dec()


def _detached(dbapi_connection: Any, record: Any) -> None:
    metrics.DB_POOL_IN_USE.dec()  # a detached connection is never checked in
