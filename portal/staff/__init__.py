from flask import Blueprint, abort, request
from flask_login import current_user

bp = Blueprint("staff", __name__)


def require_staff() -> None:
    """The staff area does not exist for anyone but staff: 404, not 403."""
    if not (current_user.is_authenticated and current_user.is_staff):
        abort(404)


def hide_from_non_staff() -> None:
    """Runs before CSRF protection for every /staff path, so a non-staff POST cannot learn the area exists."""
    if request.path.startswith("/staff"):
        require_staff()


from portal.staff import mail, routes, usage  # noqa: E402,F401
