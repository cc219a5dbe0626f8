"""``/healthz``, ``/readyz`` and ``/metrics``."""

from __future__ import annotations

import hmac
from typing import Any

import sqlalchemy as sa
from flask import Response, current_app, jsonify, request

from portal import metrics
from portal.errors import json_error
from portal.extensions import db
from portal.ops import bp
from portal.ops.health import AHEAD, check_readiness

BEARER = "bearer "


def _no_store(response: Any, status: int = 200) -> Any:
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/healthz")
def healthz() -> Any:
    """The process answers (liveness): no database, nothing else."""
    return _no_store(jsonify({"status": "ok"}))


@bp.get("/readyz")
def readyz() -> Any:
    """Ready to serve: the database answers and this code's newest migration is applied (the database may be
    ahead of it, mid rolling deploy: then a note says so); else 503 with the reason."""
    config = current_app.config
    readiness = check_readiness(db.engine, config["MIGRATIONS_HEAD"], config["MIGRATIONS_KNOWN"])
    if not readiness.ready:
        return _no_store(json_error(503, readiness.code, readiness.message), 503)
    body = {"status": "ready", "migration": readiness.revision}
    if readiness.code == AHEAD:
        body["note"] = readiness.message
    return _no_store(jsonify(body))


@bp.get("/metrics", endpoint="metrics")
def metrics_scrape() -> Any:
    """Prometheus' scrape, for ``Authorization: Bearer <METRICS_TOKEN>`` only; 404 while no token is set."""
    token = current_app.config.get("METRICS_TOKEN")
    if not token:
        return _no_store(json_error(404, "metrics_disabled", "Metrics are off: set METRICS_TOKEN to serve them."), 404)
    given = request.headers.get("Authorization", "")
    if given[: len(BEARER)].lower() != BEARER:
        error = json_error(401, "missing_token", "Send the metrics token as 'Authorization: Bearer <token>'.")
        error.headers["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return _no_store(error, 401)
    if not hmac.compare_digest(given[len(BEARER) :].strip().encode(), str(token).encode()):
        return _no_store(json_error(403, "invalid_token", "That is not the metrics token."), 403)
    body = metrics.exposition(metrics.database_collector(_backlog_row))
    return _no_store(Response(body, 200, content_type=metrics.CONTENT_TYPE))


def _backlog_row(sql: str) -> tuple[Any, ...] | None:
    """The scrape's one query, in the request's session (returned to the pool when the request ends)."""
    return tuple(db.session.execute(sa.text(sql)).one())
