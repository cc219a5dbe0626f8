"""Two-factor sign-in: authenticator apps (TOTP), passkeys (WebAuthn) and recovery codes.

Pages live at /login/two-factor (the second step of signing in) and /account/two-factor (settings); an
organization's owners require it at /orgs/<slug>/settings/two-factor.
"""

from flask import Blueprint

bp = Blueprint("twofactor", __name__)


from portal.twofactor import routes  # noqa: E402,F401
from portal.twofactor.guards import enforce_two_factor  # noqa: E402

bp.before_app_request(enforce_two_factor)
