"""Where two-factor is required: organizations that ask for it, and the staff area in production.

A member without two-factor who opens a page of such an organization is sent to the enrolment page instead;
their other organizations are unaffected. Runs after the staff guard, so non-staff still get 404 at /staff.
"""

from __future__ import annotations

from typing import Any

from flask import current_app, flash, redirect, request, url_for
from flask_login import current_user

from portal.twofactor import services

# Pages a blocked member may still open: enrolment itself, signing out.
_ALWAYS_OPEN = ("twofactor.", "auth.logout", "static")


def enforce_two_factor() -> Any:
    if not current_user.is_authenticated or (request.endpoint or "").startswith(_ALWAYS_OPEN):
        return None
    if request.path.startswith("/staff") and current_user.is_staff and current_app.config["STAFF_REQUIRE_TWO_FACTOR"]:
        if not services.is_enabled(current_user.id):
            flash("Staff need two-factor authentication to open the staff area. Turn it on to continue.", "warning")
            return redirect(url_for("twofactor.index"))
        return None
    slug = (request.view_args or {}).get("slug")
    if slug and "\x00" not in str(slug) and request.path.startswith("/orgs/"):  # NUL: refused by a later hook
        org = services.org_requiring_two_factor(str(slug), current_user.id)
        if org is not None and not services.is_enabled(current_user.id):
            flash(f"{org.name} requires two-factor authentication. Turn it on to continue.", "warning")
            return redirect(url_for("twofactor.index", org=org.slug))
    return None
