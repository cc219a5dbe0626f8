from __future__ import annotations

from typing import Any

from flask import flash, redirect, request, session, url_for
from flask_login import current_user, login_required, login_user, logout_user

from portal.account import sessions
from portal.auth import bp, devices, services
from portal.auth.forms import LoginForm, PasswordChangeForm, SignupForm
from portal.http import render_form_page, safe_next_url
from portal.orgs.invites import invitation_for_next
from portal.twofactor import pending as two_factor


def start_session(user: Any, remember: bool = False, *, second_factor: bool = False) -> None:
    """A fresh session for each sign-in: nothing (CSRF token, last organization) carries over from before.
    The cookies carry only the secret of a new server-side session (portal.account.sessions)."""
    session.clear()
    session.permanent = True
    sessions.open_session(
        user,
        remember=remember,
        ip=request.remote_addr,
        user_agent=request.user_agent.string,
        second_factor=second_factor,
    )
    login_user(user, remember=remember)


def landing_url(user: Any) -> str:
    """Where signing in leads when no page asked for it: staff to the staff area, members to the organization
    they used last (``orgs.home`` picks it)."""
    return url_for("staff.index") if user.is_staff else url_for("orgs.home")


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    if current_user.is_authenticated:
        return redirect(url_for("orgs.home"))
    form = LoginForm()
    if form.validate_on_submit():
        try:
            user = services.authenticate(
                form.email.data,
                form.password.data,
                request.remote_addr,
                user_agent=request.user_agent.string,
                known_user_ids=devices.known_user_ids(),
            )
        except services.Throttled as exc:
            form.form_errors.append(str(exc))
            return render_form_page("auth/login.html", status_on_error=429, form=form)
        except services.AuthError as exc:
            form.form_errors.append(str(exc))
            return render_form_page("auth/login.html", status_on_error=401, form=form)
        if two_factor.required(user):  # not signed in yet: /login/two-factor asks for the second factor
            return two_factor.begin(user, remember=form.remember.data, next_url=request.args.get("next"))
        start_session(user, remember=form.remember.data)
        return devices.remember(redirect(safe_next_url(request.args.get("next")) or landing_url(user)), user.id)
    return render_form_page("auth/login.html", form=form)


@bp.route("/signup", methods=["GET", "POST"])
def signup() -> Any:
    if current_user.is_authenticated:
        return redirect(url_for("orgs.home"))
    next_url = safe_next_url(request.args.get("next"))
    invitation = invitation_for_next(next_url)
    form = SignupForm()
    if request.method == "GET" and invitation is not None and invitation.email:
        form.email.data = invitation.email  # the address the invitation was sent to
    if form.validate_on_submit():
        # Signing up to accept an invitation joins that organization instead of creating one; an address other
        # than the invited one cannot accept it, so that account gets its own organization as usual.
        joining = invitation is not None and invitation.email in (None, form.email.data)
        try:
            services.sign_up(
                form.email.data,
                form.display_name.data,
                form.password.data,
                ip=request.remote_addr,
                personal_org=not joining,
            )
        except services.WeakPassword as exc:
            form.password.errors.append(str(exc))
        except services.SignupThrottled:
            form.form_errors.append("Too many sign-ups from your network. Try again in an hour.")
            return render_form_page("auth/signup.html", status_on_error=429, form=form)
        else:
            # The same answer whether or not the address had an account, and nobody is signed in: a signed-in
            # session would tell a new address from one that has an account. The new member signs in next.
            return redirect(url_for("auth.check_email", next=next_url))
    return render_form_page("auth/signup.html", form=form, invitation=invitation)


@bp.post("/logout")
@login_required
def logout() -> Any:
    """End this session on the server, so its cookies (copies included) stop working, and clear them here."""
    sessions.sign_out(current_user, ip=request.remote_addr, user_agent=request.user_agent.string)
    session.clear()
    logout_user()  # after clear(): it marks the remember-me cookie for deletion in the session
    flash("You are signed out.", "info")
    return redirect(url_for("auth.login"))


@bp.route("/account/password", methods=["GET", "POST"])
@login_required
def change_password() -> Any:
    form = PasswordChangeForm()
    if form.validate_on_submit():
        try:
            changed = services.change_password(
                current_user,
                form.current_password.data,
                form.new_password.data,
                ip=request.remote_addr,
                user_agent=request.user_agent.string,
                keep=current_user.current_session,
            )
        except services.WeakPassword as exc:
            form.new_password.errors.append(str(exc))
            return render_form_page("auth/password.html", form=form)
        except services.Throttled as exc:
            form.form_errors.append(str(exc))
            return render_form_page("auth/password.html", status_on_error=429, form=form)
        if changed:
            flash("Password changed. Other sessions were signed out.", "success")
            return redirect(url_for("orgs.home"))
        form.current_password.errors.append("That is not your current password.")
    return render_form_page("auth/password.html", form=form)
