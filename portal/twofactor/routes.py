"""Two-factor pages: the sign-in step (/login/two-factor) and the account's settings (/account/two-factor)."""

from __future__ import annotations

import json
from typing import Any

from flask import abort, current_app, flash, g, redirect, render_template, request, session, url_for
from flask_login import current_user, login_required
from werkzeug.wrappers import Response

from portal.http import render_form_page
from portal.models import User
from portal.orgs.context import org_view
from portal.twofactor import bp, passkey_services, passkeys, pending, sealing, services, totp
from portal.twofactor.forms import (
    CodeForm,
    ConfirmIdentityForm,
    OrgTwoFactorForm,
    PasskeyForm,
    PasskeyRegisterForm,
    TotpSetupForm,
)
from portal.twofactor.passkeys import PasskeyError

TOTP_ENROLMENT = "two_factor_totp_enrolment"  # the sealed secret being enrolled, until a code confirms it
ENROLMENT_MAX_AGE = 15 * 60
NEW_RECOVERY_CODES = "two_factor_new_recovery_codes"  # sealed, from the POST that made them to the page showing them
NEW_RECOVERY_CODES_MAX_AGE = 10 * 60


def _me() -> User:
    return current_user._get_current_object()  # type: ignore[no-any-return]


def _hidden_errors_to_form(form: Any) -> None:
    """Hidden fields have no place to show an error; show it above the form instead."""
    for name in ("credential",):
        if name in form and form[name].errors:
            form.form_errors.extend(form[name].errors)


# Sign-in: the second step ------------------------------------------------------------------------------------


def _challenge_page(user: User, form: CodeForm, passkey_form: PasskeyForm, status: int = 200) -> Any:
    keys = services.passkeys_of(user)
    options = None
    if keys:
        options, challenge = passkeys.authentication_options(pending.relying_party(), keys)
        pending.keep_challenge("sign_in", challenge)
    return render_template("twofactor/challenge.html", form=form, passkey_form=passkey_form, options=options), status


@bp.route("/login/two-factor", methods=["GET", "POST"])
def challenge() -> Any:
    user = pending.pending_user()
    if user is None:
        flash("Your sign-in expired. Enter your password again.", "info")
        return redirect(url_for("auth.login"))
    form = CodeForm()
    if form.validate_on_submit():
        try:
            method = services.verify_sign_in_code(pending.actor(user), form.code.data)
        except services.Throttled as exc:
            form.code.errors.append(str(exc))
            return _challenge_page(user, form, PasskeyForm(formdata=None), 429)
        except services.TwoFactorError as exc:
            form.code.errors.append(str(exc))
            return _challenge_page(user, form, PasskeyForm(formdata=None), 401)
        notice = None
        if method == "recovery_code":
            left = services.status(user).recovery_codes_left
            notice = f"You used a recovery code; {left} left. Generate new ones on your two-factor page."
        return pending.finish(user, notice)
    return _challenge_page(user, form, PasskeyForm(formdata=None), 422 if request.method == "POST" else 200)


@bp.post("/login/two-factor/passkey")
def challenge_passkey() -> Any:
    user = pending.pending_user()
    if user is None:
        flash("Your sign-in expired. Enter your password again.", "info")
        return redirect(url_for("auth.login"))
    passkey_form = PasskeyForm()
    stored = pending.take_challenge("sign_in")
    if passkey_form.validate_on_submit():
        try:
            if stored is None:
                raise PasskeyError("This passkey request expired. Try again.")
            credential = passkey_form.credential.data
            passkey_services.sign_in_with_passkey(pending.actor(user), credential, stored, pending.relying_party())
        except (services.TwoFactorError, PasskeyError) as exc:
            passkey_form.form_errors.append(str(exc))
            status = 429 if isinstance(exc, services.Throttled) else 401
            return _challenge_page(user, CodeForm(formdata=None), passkey_form, status)
        return pending.finish(user)
    _hidden_errors_to_form(passkey_form)
    return _challenge_page(user, CodeForm(formdata=None), passkey_form, 422)


# The account's two-factor settings ---------------------------------------------------------------------------


@bp.get("/account/two-factor/")
@login_required
def index() -> Any:
    return render_template("twofactor/index.html", status=services.status(_me()))


def _show_recovery_codes(codes: list[str], message: str) -> Response:
    """Redirect to the page that shows new codes once, so that reloading it never resubmits the form.

    The codes wait in the session cookie, which is signed but not encrypted, so they are sealed there.
    """
    kept = {"user": str(_me().id), "codes": codes, "message": message}
    session[NEW_RECOVERY_CODES] = sealing.seal(json.dumps(kept)).decode()
    return redirect(url_for("twofactor.new_recovery_codes"))


def _take_new_recovery_codes() -> dict[str, Any] | None:
    sealed = session.pop(NEW_RECOVERY_CODES, None)
    if not isinstance(sealed, str):
        return None
    try:
        kept = json.loads(sealing.unseal(sealed.encode(), max_age_seconds=NEW_RECOVERY_CODES_MAX_AGE))
    except (sealing.Unsealable, ValueError):
        return None
    return kept if isinstance(kept, dict) and kept.get("user") == str(_me().id) else None


@bp.get("/account/two-factor/recovery-codes/new")
@login_required
def new_recovery_codes() -> Any:
    kept = _take_new_recovery_codes()
    if kept is None:
        flash("Recovery codes are shown only once. If you did not save them, generate new ones.", "info")
        return redirect(url_for("twofactor.index"))
    return render_template("twofactor/recovery_codes.html", codes=kept["codes"], message=kept["message"])


def _enrolment_secret() -> str:
    sealed = session.get(TOTP_ENROLMENT)
    if isinstance(sealed, str):
        try:
            return sealing.unseal(sealed.encode(), max_age_seconds=ENROLMENT_MAX_AGE)
        except sealing.Unsealable:
            pass
    secret = totp.new_secret()
    session[TOTP_ENROLMENT] = sealing.seal(secret).decode()  # the session cookie is signed, not encrypted
    return secret


@bp.route("/account/two-factor/app", methods=["GET", "POST"])
@login_required
def totp_setup() -> Any:
    user = _me()
    if services.status(user).totp:
        flash("An authenticator app is already set up.", "info")
        return redirect(url_for("twofactor.index"))
    secret = _enrolment_secret()
    form = TotpSetupForm()
    confirming = services.is_enabled(user.id)
    if not confirming:
        del form.confirmation
    if form.validate_on_submit():
        try:
            confirmation = form.confirmation.data if confirming else None
            codes = services.enable_totp(pending.actor(user), secret, form.code.data, confirmation)
        except services.Throttled as exc:
            form.code.errors.append(str(exc))
            status = 429
        except services.WrongConfirmation as exc:
            form.confirmation.errors.append(str(exc))
            status = 422
        except services.TwoFactorError as exc:
            form.code.errors.append(str(exc))
            status = 422
        else:
            session.pop(TOTP_ENROLMENT, None)
            if codes:
                return _show_recovery_codes(codes, "Two-factor authentication is on.")
            flash("Authenticator app added.", "success")
            return redirect(url_for("twofactor.index"))
    else:
        status = 422 if request.method == "POST" else 200
    uri = totp.provisioning_uri(secret, user.email, current_app.config["TWO_FACTOR_ISSUER"])
    page = render_template(
        "twofactor/totp_setup.html", form=form, qr=totp.qr_svg_data_uri(uri), setup_key=totp.grouped(secret)
    )
    return page, status


def _confirmed_change(template: str, action: Any, **context: Any) -> Any:
    """A page whose form asks for the password or a code, then runs ``action(actor, confirmation)``."""
    form = ConfirmIdentityForm()
    if form.validate_on_submit():
        try:
            return action(pending.actor(_me()), form.confirmation.data)
        except services.Throttled as exc:
            form.confirmation.errors.append(str(exc))
            return render_template(template, form=form, **context), 429
        except services.TwoFactorError as exc:
            form.confirmation.errors.append(str(exc))
    return render_form_page(template, form=form, **context)


def _signed_out_elsewhere(turned_off: bool, message: str) -> Response:
    if turned_off:
        flash("Two-factor authentication is off. Your other sessions were signed out.", "warning")
    else:
        flash(message, "success")
    return redirect(url_for("twofactor.index"))


@bp.route("/account/two-factor/app/remove", methods=["GET", "POST"])
@login_required
def totp_remove() -> Any:
    if not services.status(_me()).totp:
        return redirect(url_for("twofactor.index"))

    def remove(actor: services.Actor, confirmation: str) -> Response:
        return _signed_out_elsewhere(services.remove_totp(actor, confirmation), "Authenticator app removed.")

    return _confirmed_change("twofactor/confirm.html", remove, heading="Remove the authenticator app", submit="Remove")


@bp.route("/account/two-factor/disable", methods=["GET", "POST"])
@login_required
def disable() -> Any:
    if not services.status(_me()).enabled:
        return redirect(url_for("twofactor.index"))

    def turn_off(actor: services.Actor, confirmation: str) -> Response:
        services.disable(actor, confirmation)
        return _signed_out_elsewhere(True, "")

    return _confirmed_change(
        "twofactor/confirm.html", turn_off, heading="Turn off two-factor authentication", submit="Turn off"
    )


@bp.route("/account/two-factor/recovery-codes", methods=["GET", "POST"])
@login_required
def recovery_codes() -> Any:
    if not services.status(_me()).enabled:
        return redirect(url_for("twofactor.index"))

    def regenerate(actor: services.Actor, confirmation: str) -> Any:
        codes = services.regenerate_recovery_codes(actor, confirmation)
        return _show_recovery_codes(codes, "New recovery codes. The old ones no longer work.")

    return _confirmed_change(
        "twofactor/confirm.html", regenerate, heading="Generate new recovery codes", submit="Generate new codes"
    )


@bp.route("/account/two-factor/passkeys/new", methods=["GET", "POST"])
@login_required
def passkey_new() -> Any:
    user = _me()
    form = PasskeyRegisterForm()
    confirming = services.is_enabled(user.id)
    if not confirming:
        del form.confirmation
    rp = pending.relying_party()
    if request.method == "POST":
        stored = pending.take_challenge("register")
        if form.validate_on_submit():
            try:
                if stored is None:
                    raise PasskeyError("This passkey request expired. Try again.")
                confirmation = form.confirmation.data if confirming else None
                codes = passkey_services.add_passkey(
                    pending.actor(user), form.name.data, form.credential.data, stored, rp, confirmation
                )
            except services.WrongConfirmation as exc:
                form.confirmation.errors.append(str(exc))
            except (services.TwoFactorError, PasskeyError) as exc:
                form.form_errors.append(str(exc))
            else:
                if codes:
                    message = f"Passkey “{form.name.data}” added. Two-factor authentication is on."
                    return _show_recovery_codes(codes, message)
                flash(f"Passkey “{form.name.data}” added.", "success")
                return redirect(url_for("twofactor.index"))
        _hidden_errors_to_form(form)
    options, challenge = passkeys.registration_options(user, rp, services.passkeys_of(user))
    pending.keep_challenge("register", challenge)
    status = 422 if request.method == "POST" else 200
    return render_template("twofactor/passkey_new.html", form=form, options=options), status


@bp.route("/account/two-factor/passkeys/<passkey_id>/remove", methods=["GET", "POST"])
@login_required
def passkey_remove(passkey_id: str) -> Any:
    passkey = passkey_services.find_passkey(_me(), passkey_id)
    if passkey is None:
        abort(404)
    name = passkey.name

    def remove(actor: services.Actor, confirmation: str) -> Response:
        turned_off = passkey_services.remove_passkey(actor, passkey, confirmation)
        return _signed_out_elsewhere(turned_off, f"Passkey “{name}” removed.")

    return _confirmed_change(
        "twofactor/confirm.html", remove, heading=f"Remove the passkey “{name}”", submit="Remove passkey"
    )


# Organization requirement -------------------------------------------------------------------------------------


@bp.post("/orgs/<slug>/settings/two-factor")
@org_view("org.settings")
def org_requirement(slug: str) -> Any:
    form = OrgTwoFactorForm()
    if form.validate_on_submit():
        try:
            changed = services.set_org_requirement(g.org, form.require.data, _me(), ip=request.remote_addr)
        except services.TwoFactorError as exc:
            flash(str(exc), "error")
        else:
            if changed and form.require.data:
                flash("Members now need two-factor authentication to open this organization.", "success")
            elif changed:
                flash("Two-factor authentication is no longer required here.", "success")
    return redirect(url_for("orgs.settings", slug=g.org.slug))
