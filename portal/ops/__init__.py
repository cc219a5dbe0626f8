"""Operating the portal: health probes (``/healthz``, ``/readyz``), Prometheus metrics (``/metrics``) and the
per-request log line and page latency of every Flask request (the /v1 fast path logs its own calls).

Probes and metrics are for machines: no session, no CSRF, JSON or text answers that are never cached.
"""

from __future__ import annotations

from flask import Blueprint, Flask

bp = Blueprint("ops", __name__)


def init_app(app: Flask) -> None:
    """Register the probes and metrics, the request hooks and the pool gauge."""
    from portal.db import migration_revisions, migrations_head
    from portal.ops import requests

    revisions = migration_revisions()
    app.config.setdefault("MIGRATIONS_HEAD", migrations_head(revisions))  # what /readyz expects the database at
    # every revision this code knows: a database at any other one was migrated by a newer release
    app.config.setdefault("MIGRATIONS_KNOWN", frozenset(revisions))
    app.register_blueprint(bp)
    requests.init_app(app)


from portal.ops import routes  # noqa: E402,F401
