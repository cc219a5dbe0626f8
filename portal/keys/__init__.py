from flask import Blueprint

bp = Blueprint("keys", __name__)

from portal.keys import rotation_routes, routes, selection_routes  # noqa: E402,F401
