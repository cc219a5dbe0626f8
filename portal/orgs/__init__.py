from flask import Blueprint

bp = Blueprint("orgs", __name__)

from portal.orgs import routes  # noqa: E402,F401
