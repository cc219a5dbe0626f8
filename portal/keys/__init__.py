from flask import Blueprint

bp = Blueprint("keys", __name__)

from portal.keys import routes  # noqa: E402,F401
