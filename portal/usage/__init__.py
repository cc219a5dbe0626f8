"""Usage analytics: the organization dashboard, per-key pages and CSV exports."""

from flask import Blueprint

bp = Blueprint("usage", __name__)

from portal.usage import routes  # noqa: E402,F401
