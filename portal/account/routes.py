"""The member's own account: signed-in sessions and the security log."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from flask import abort, current_app, flash, redirect, render_template, request, session, url_for
from flask_login import current_user, login_required, logout_user

from portal.account import bp, security_log, sessions
from portal.forms import ConfirmForm
from portal.http import page_arg

bp.add_app_template_filter(security_log.label, "security_event_label")
bp.add_app_template_filter(security_log.describe_detail, "security_detail")
bp.add_app_template_filter(sessions.describe_agent, "describe_agent")


@bp.app_template_filter("duration")
def duration(value: timedelta) -> str:
    """``12 hours``, ``14 days``: a lifetime from the config, as the account page words it."""
    if value.days and not value.seconds:
        return f"{value.days} day{'s' if value.days != 1 else ''}"
    hours = round(value.total_seconds() / 3600)
    return f"{hours} hour{'s' if hours != 1 else ''}"


def _client() -> dict[str, Any]:
    return {"ip": request.remote_addr, "user_agent": request.user_agent.string}


@bp.get("/")
@login_required
def index() -> Any:
    return redirect(url_for("account.sessions_page"))


@bp.get("/sessions")
@login_required
def sessions_page() -> Any:
    return render_template("account/sessions.html", sessions=sessions.active_sessions(current_user), form=ConfirmForm())


@bp.post("/sessions/<uuid:session_id>/revoke")
@login_required
def revoke_session(session_id: uuid.UUID) -> Any:
    """Sign out one session (CSRF is checked for every POST by CSRFProtect)."""
    target = sessions.find_own_session(current_user, session_id)
    if target is None:
        abort(404)
    is_current = current_user.current_session is not None and target.id == current_user.current_session.id
    sessions.revoke_session(current_user, target, **_client())
    if is_current:  # the same as signing out
        session.clear()
        logout_user()
        flash("You are signed out.", "info")
        return redirect(url_for("auth.login"))
    flash("That session is signed out.", "success")
    return redirect(url_for("account.sessions_page"))


@bp.post("/sessions/revoke-others")
@login_required
def revoke_other_sessions() -> Any:
    ended = sessions.sign_out_others(current_user, **_client())
    if ended:
        flash(f"Signed out {ended} other session{'s' if ended != 1 else ''}.", "success")
    else:
        flash("There were no other sessions to sign out.", "info")
    return redirect(url_for("account.sessions_page"))


@bp.get("/security")
@login_required
def security() -> Any:
    events = security_log.events_for(
        current_user, page=page_arg(), per_page=current_app.config["SECURITY_LOG_PER_PAGE"]
    )
    return render_template("account/security.html", events=events)
