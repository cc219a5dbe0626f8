"""Forgotten passwords: ask for a link by mail, then set a new password through it."""

from __future__ import annotations

from typing import Any

from flask import flash, redirect, render_template, request, url_for

from portal.auth import bp, reset, services
from portal.auth.email_routes import no_store
from portal.auth.forms import ForgotPasswordForm, ResetPasswordForm
from portal.http import render_form_page


@bp.route("/password/forgot", methods=["GET", "POST"])
def forgot_password() -> Any:
    form = ForgotPasswordForm()
    if form.validate_on_submit():
        reset.request_password_reset(form.email.data, ip=request.remote_addr)
        # One answer for every address, known or not, throttled or not.
        return render_template("auth/forgot_sent.html", email=form.email.data)
    return render_form_page("auth/forgot.html", form=form)


@bp.route("/password/reset/<token>", methods=["GET", "POST"])
def reset_password(token: str) -> Any:
    if reset.usable_link(token) is None:
        return no_store(render_template("auth/link_invalid.html", what="password reset"), 410)
    form = ResetPasswordForm()
    if form.validate_on_submit():
        try:
            user = reset.reset_password(
                token, form.new_password.data, ip=request.remote_addr, user_agent=request.user_agent.string
            )
        except services.WeakPassword as exc:
            form.new_password.errors.append(str(exc))
        else:
            if user is None:
                return no_store(render_template("auth/link_invalid.html", what="password reset"), 410)
            flash("Your password is reset and every session was signed out. Sign in with the new one.", "success")
            return redirect(url_for("auth.login"))
    page, status = render_form_page("auth/reset.html", form=form)
    return no_store(page, status)
