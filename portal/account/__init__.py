"""The member's own account: signed-in sessions and the security log (``/account``)."""

from flask import Blueprint

bp = Blueprint("account", __name__)

from portal.account import routes  # noqa: E402,F401
