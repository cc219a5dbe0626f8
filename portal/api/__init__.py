"""The ``/v1`` HTTP layer: routes, the WSGI fast path, input parsing, answers, OpenAPI and ``@require_api_key``.

The verification itself lives in :mod:`portal.verification`; this package only speaks HTTP around it.
"""

from __future__ import annotations

import atexit
from pathlib import Path

from flask import Blueprint, Flask, current_app

from portal.verification.verifier import Verifier, build_verifier

bp = Blueprint("api", __name__)
EXTENSION = "portal.verifier"


def init_app(app: Flask) -> None:
    """Register the blueprint (no CSRF, no session), the WSGI fast path and this process's verifier."""
    from portal.api.fastpath import VerifyFastPath
    from portal.extensions import csrf
    from portal.logs import request_lines

    verifier = build_verifier(
        app.config["SQLALCHEMY_DATABASE_URI"],
        str(app.config["API_KEY_PEPPER"]),
        flush_interval=float(app.config["API_USAGE_FLUSH_INTERVAL"]),
        timeout=float(app.config["API_VERIFY_DEADLINE"]),
        invalid_key_budget=int(app.config["API_INVALID_KEY_BUDGET"]),
        budget_addresses=int(app.config["API_INVALID_KEY_ADDRESSES"]),
        partitions_ahead=int(app.config["USAGE_PARTITIONS_AHEAD_DAYS"]),
        spill_dir=spill_directory(app),
        pool_mode=str(app.config["DATABASE_POOL_MODE"]),
    )
    if app.config.get("LOG_API_REQUESTS", True) and hasattr(verifier.recorder, "companions"):
        verifier.recorder.companions.append(request_lines.write)
    atexit.register(lambda: get_verifier(app).close())
    app.extensions[EXTENSION] = verifier
    csrf.exempt(bp)
    app.register_blueprint(bp, url_prefix="/v1")
    fast_path = VerifyFastPath(app)
    fast_path.enabled = bool(app.config.get("API_VERIFY_FAST_PATH", True))
    app.extensions["portal.verify_fast_path"] = fast_path
    app.wsgi_app = fast_path  # type: ignore[method-assign]


def spill_directory(app: Flask) -> Path | None:
    """Where this instance's workers spill usage rows they cannot write when they stop (``API_USAGE_SPILL_DIR``,
    else ``usage-spill`` in the instance folder; empty: nowhere)."""
    setting = app.config.get("API_USAGE_SPILL_DIR")
    if setting == "":
        return None
    return Path(setting) if setting else Path(app.instance_path) / "usage-spill"


def install_verifier(app: Flask, verifier: Verifier) -> Verifier:
    """Swap the app's verifier (tests inject one bound to their transaction); returns the previous one."""
    previous: Verifier = app.extensions[EXTENSION]
    app.extensions[EXTENSION] = verifier
    return previous


def get_verifier(app: Flask | None = None) -> Verifier:
    return (app or current_app).extensions[EXTENSION]  # type: ignore[no-any-return]


from portal.api import routes  # noqa: E402,F401
