"""Forms and validators shared by several features."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import Field, Form
from wtforms.fields.choices import SelectChoice
from wtforms.validators import ValidationError

from portal import identity


def no_control_chars(form: Form, field: Field) -> None:
    if field.data and any(ord(c) < 32 for c in str(field.data)):
        raise ValidationError("Control characters are not allowed.")


def identity_text(form: Form, field: Field) -> None:
    """Names and addresses people rely on: no invisible characters, no look-alike mixed alphabets."""
    reason = identity.problem(str(field.data)) if field.data else None
    if reason:
        raise ValidationError(reason)


def email_filter(value: object) -> object:
    """Addresses compare in one form: NFC, lower case, no surrounding space."""
    return identity.normalize_email(value) if isinstance(value, str) else value


def strip_filter(value: object) -> object:
    return value.strip() if isinstance(value, str) else value


def choices(pairs: list[tuple[str, str]] | tuple[tuple[str, str], ...]) -> list[SelectChoice]:
    """WTForms choices from ``(value, label)`` pairs."""
    return [SelectChoice(value, label) for value, label in pairs]


class ConfirmForm(FlaskForm):
    """An empty form: a POST with a CSRF token, for buttons like revoke, remove or accept."""
