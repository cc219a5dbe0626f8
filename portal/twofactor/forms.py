"""Forms for two-factor sign-in and its settings."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import BooleanField, HiddenField, PasswordField, StringField
from wtforms.validators import DataRequired, Length, Optional, ValidationError

from portal.forms import no_control_chars, strip_filter
from portal.twofactor.passkeys import MAX_CREDENTIAL_JSON

CODE_FIELD_ATTRS = {"autocomplete": "one-time-code", "autocapitalize": "none", "spellcheck": "false"}


class CodeForm(FlaskForm):
    code = StringField(
        "Authentication code",
        validators=[DataRequired(), Length(max=64, message="That is too long to be a code.")],
        filters=[strip_filter],
        description="The 6-digit code from your authenticator app, or one of your recovery codes.",
        render_kw=CODE_FIELD_ATTRS,
    )


def _another_factor_confirmation() -> PasswordField:
    """Asked only when two-factor is on already: the view removes the field otherwise."""
    return PasswordField(
        "Your password or a current code",
        validators=[Optional(), Length(max=128)],
        description="Two-factor authentication is on: adding another way to sign in needs your password or a code.",
        render_kw={"autocomplete": "current-password"},
    )


class TotpSetupForm(FlaskForm):
    code = StringField(
        "Code from the app",
        validators=[DataRequired(), Length(max=64, message="That is too long to be a code.")],
        filters=[strip_filter],
        render_kw={**CODE_FIELD_ATTRS, "inputmode": "numeric"},
    )
    confirmation = _another_factor_confirmation()


class ConfirmIdentityForm(FlaskForm):
    confirmation = PasswordField(
        "Your password or a current code",
        validators=[DataRequired(), Length(max=128)],
        description="A change that weakens your account's protection needs your password or a code from your app.",
        render_kw={"autocomplete": "current-password"},
    )


class PasskeyForm(FlaskForm):
    """Filled in by static/js/passkeys.js with the browser's answer to the WebAuthn ceremony."""

    credential = HiddenField(validators=[DataRequired("Your browser did not create a passkey. Try again.")])

    def validate_credential(self, field: HiddenField) -> None:
        if len(field.data or "") > MAX_CREDENTIAL_JSON:
            raise ValidationError("The browser's answer is too long.")


class PasskeyRegisterForm(PasskeyForm):
    name = StringField(
        "Passkey name",
        validators=[DataRequired(), Length(max=60), no_control_chars],
        filters=[strip_filter],
        description="To tell your passkeys apart, for example “Work laptop” or “YubiKey”.",
    )
    confirmation = _another_factor_confirmation()


class OrgTwoFactorForm(FlaskForm):
    require = BooleanField("Require two-factor authentication for every member")
