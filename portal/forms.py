"""Forms and validators shared by several features."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import Field, Form
from wtforms.fields.choices import SelectChoice
from wtforms.validators import ValidationError


def no_control_chars(form: Form, field: Field) -> None:
    if field.data and any(ord(c) < 32 for c in str(field.data)):
        raise ValidationError("Control characters are not allowed.")


def strip_filter(value: object) -> object:
    return value.strip() if isinstance(value, str) else value


def choices(pairs: list[tuple[str, str]] | tuple[tuple[str, str], ...]) -> list[SelectChoice]:
    """WTForms choices from ``(value, label)`` pairs."""
    return [SelectChoice(value, label) for value, label in pairs]


class ConfirmForm(FlaskForm):
    """An empty form: a POST with a CSRF token, for buttons like revoke, remove or accept."""
