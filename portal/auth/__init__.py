from flask import Blueprint

bp = Blueprint("auth", __name__)

from portal.auth import email_routes, reset_routes, routes  # noqa: E402,F401
