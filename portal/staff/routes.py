from __future__ import annotations

from typing import Any

from flask import abort, render_template
from flask_login import current_user

from portal.staff import bp


@bp.before_request
def staff_only() -> None:
    """The staff area does not exist for anyone but staff: 404, not 403."""
    if not current_user.is_authenticated or not current_user.is_staff:
        abort(404)


@bp.get("/")
def index() -> Any:
    return render_template("staff/index.html")
