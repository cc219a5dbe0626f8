"""Pages for verified addresses: "check your email", the verification link and its resend, changing address."""

from __future__ import annotations

from typing import Any

from flask import flash, make_response, redirect, render_template, request, url_for
from flask_login import current_user, login_required

from portal.auth import addresses, bp, services, tokens
from portal.auth.forms import EmailChangeForm
from portal.forms import ConfirmForm
from portal.http import render_form_page, safe_next_url


def no_store(page: Any, status: int = 200) -> Any:
    """Pages whose URL holds a one-time link are never cached."""
    response = make_response(page, status)
    response.headers["Cache-Control"] = "no-store"
    return response


def _invalid_link(what: str) -> Any:
    return no_store(render_template("auth/link_invalid.html", what=what), 410)


@bp.get("/signup/check-email")
def check_email() -> Any:
    """After sign-up, whether or not the address already had an account: the answer reads the same."""
    return render_template("auth/check_email.html", next_url=safe_next_url(request.args.get("next")))


@bp.post("/account/verify-email/resend")
@login_required
def resend_verification() -> Any:
    back = safe_next_url(request.form.get("next")) or url_for("orgs.home")
    if not ConfirmForm().validate_on_submit():
        flash("The form expired. Try again.", "error")
        return redirect(back)
    try:
        addresses.resend_verification(current_user)
    except services.Throttled as exc:
        flash(str(exc), "error")
    else:
        flash(f"We sent a new link to {current_user.email}. It works for 24 hours.", "success")
    return redirect(back)


@bp.get("/verify-email/<token>")
def verify_email(token: str) -> Any:
    """A GET shows a button; only its POST uses the link, so a mail scanner opening it changes nothing."""
    if tokens.find(token, tokens.VERIFY_EMAIL) is None:
        return _invalid_link("verification")
    return no_store(render_template("auth/confirm_link.html", form=ConfirmForm(formdata=None), kind="verify"))


@bp.post("/verify-email/<token>")
def verify_email_confirm(token: str) -> Any:
    if not ConfirmForm().validate_on_submit():
        return no_store(render_template("auth/confirm_link.html", form=ConfirmForm(formdata=None), kind="verify"), 400)
    user = addresses.verify_email(token, ip=request.remote_addr)
    if user is None:
        return _invalid_link("verification")
    if current_user.is_authenticated:
        flash(f"Thank you: {user.email} is verified.", "success")
        return redirect(url_for("orgs.home"))
    # Never signed in by a mailed link: that would skip the password and any second factor.
    flash(f"Address verified: {user.email}. Sign in to continue.", "success")
    return redirect(url_for("auth.login"))


@bp.route("/account/email", methods=["GET", "POST"])
@login_required
def change_email() -> Any:
    form = EmailChangeForm()
    if form.validate_on_submit():
        try:
            addresses.request_email_change(
                current_user, form.new_email.data, form.password.data, ip=request.remote_addr
            )
        except services.Throttled as exc:
            form.form_errors.append(str(exc))
            return render_form_page("auth/email.html", status_on_error=429, form=form)
        except addresses.AddressError as exc:
            (form.password if "password" in str(exc) else form.new_email).errors.append(str(exc))
        else:
            flash(f"We sent a link to {form.new_email.data}. Your address changes when you follow it.", "success")
            return redirect(url_for("auth.change_email"))
    return render_form_page("auth/email.html", form=form)


@bp.get("/account/email/confirm/<token>")
def confirm_email_change(token: str) -> Any:
    if tokens.find(token, tokens.CHANGE_EMAIL) is None:
        return _invalid_link("address change")
    return no_store(render_template("auth/confirm_link.html", form=ConfirmForm(formdata=None), kind="change"))


@bp.post("/account/email/confirm/<token>")
def confirm_email_change_confirm(token: str) -> Any:
    if not ConfirmForm().validate_on_submit():
        return no_store(render_template("auth/confirm_link.html", form=ConfirmForm(formdata=None), kind="change"), 400)
    try:
        user = addresses.confirm_email_change(token, ip=request.remote_addr)
    except addresses.AddressError as exc:
        return no_store(render_template("auth/link_invalid.html", what="address change", message=str(exc)), 409)
    if user is None:
        return _invalid_link("address change")
    flash(f"Your address is now {user.email}.", "success")
    return redirect(url_for("orgs.home") if current_user.is_authenticated else url_for("auth.login"))
