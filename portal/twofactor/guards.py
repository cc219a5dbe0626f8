"""Where two-factor is required: organizations that ask for it, and the staff area in production.

A member without two-factor who opens a page of such an organization is sent to the enrolment page instead;
their other organizations are unaffected. A member with two-factor whose session did not pass the second step
(signed in with the password alone, before two-factor was on) is signed out and asked to sign in again. Runs
after the staff guard, so non-staff still get 404 at /staff.
"""

from __future__ import annotations

from typing import Any

from flask import current_app, flash, redirect, request, session, url_for
from flask_login import current_user, logout_user

from portal.twofactor import hooks, services

# Pages a blocked member may still open: enrolment itself (its answers show the new recovery codes) and signing
# out. Only these: the organization's own two-factor setting is not one of them.
_ALWAYS_OPEN = frozenset(
    {
        "twofactor.index",
        "twofactor.totp_setup",
        "twofactor.passkey_new",
        "twofactor.challenge",
        "twofactor.challenge_passkey",
        "auth.logout",
        "static",
    }
)


def enforce_two_factor() -> Any:
    if not current_user.is_authenticated or request.endpoint in _ALWAYS_OPEN:
        return None
    if request.path.startswith("/staff") and current_user.is_staff and current_app.config["STAFF_REQUIRE_TWO_FACTOR"]:
        if not services.is_enabled(current_user.id):
            flash("Staff need two-factor authentication to open the staff area. Turn it on to continue.", "warning")
            return redirect(url_for("twofactor.index"))
        if not hooks.session_has_second_factor(current_user):
            return _sign_in_again("The staff area")
        return None
    slug = (request.view_args or {}).get("slug")
    if slug and "\x00" not in str(slug) and request.path.startswith("/orgs/"):  # NUL: refused by a later hook
        org = services.org_requiring_two_factor(str(slug), current_user.id)
        if org is None:
            return None
        if not services.is_enabled(current_user.id):
            flash(f"{org.name} requires two-factor authentication. Turn it on to continue.", "warning")
            return redirect(url_for("twofactor.index", org=org.slug))
        if not hooks.session_has_second_factor(current_user):
            return _sign_in_again(org.name)
    return None


def _sign_in_again(what: str) -> Any:
    """This session began with the password alone: end it, and ask for a sign-in with the second factor."""
    hooks.sign_out_this_session(current_user, ip=request.remote_addr, user_agent=request.user_agent.string)
    session.clear()
    logout_user()
    flash(
        f"{what} requires two-factor authentication, and this session was signed in with the password alone. "
        "Sign in again with your second factor.",
        "warning",
    )
    back = request.full_path.rstrip("?") if request.method == "GET" else None
    return redirect(url_for("auth.login", next=back))
