"""The ``/v1`` JSON API: key verification, the ``@require_api_key`` demo route and the OpenAPI document."""

from __future__ import annotations

import atexit

from flask import Blueprint, Flask

bp = Blueprint("api", __name__)


def init_app(app: Flask) -> None:
    """Register the blueprint (no CSRF, no session) and the verifier, flushed when the process stops."""
    from portal.api import services
    from portal.api.fastpath import VerifyFastPath
    from portal.extensions import csrf

    verifier = services.init_app(app)
    atexit.register(verifier.close)
    csrf.exempt(bp)
    app.register_blueprint(bp, url_prefix="/v1")
    fast_path = VerifyFastPath(app, verifier)
    fast_path.enabled = bool(app.config.get("API_VERIFY_FAST_PATH", True))
    app.extensions["portal.verify_fast_path"] = fast_path
    app.wsgi_app = fast_path  # type: ignore[method-assign]


from portal.api import routes  # noqa: E402,F401
