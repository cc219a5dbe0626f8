from flask import Blueprint, abort, request
from flask_login import current_user

bp = Blueprint("staff", __name__)


def hide_from_non_staff() -> None:
    """The staff area does not exist for anyone but staff: 404, not 403."""
    if request.path.startswith("/staff") and not (current_user.is_authenticated and current_user.is_staff):
        abort(404)


from portal.staff import mail, routes  # noqa: E402,F401
