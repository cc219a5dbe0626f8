from __future__ import annotations

from datetime import UTC, date, datetime, time

from flask_wtf import FlaskForm
from wtforms import (
    DateField,
    Field,
    HiddenField,
    IntegerField,
    RadioField,
    SelectField,
    SelectMultipleField,
    StringField,
    TextAreaField,
)
from wtforms.validators import DataRequired, Length, Optional, ValidationError
from wtforms.widgets import CheckboxInput, ListWidget

from portal import scopes as scope_catalogue
from portal.forms import choices, no_control_chars, strip_filter
from portal.keys import policy
from portal.keys.services import ROLL_GRACE_PERIODS
from portal.timeutil import utcnow

NAME_RULES = [DataRequired(), Length(max=100), no_control_chars]


def future_date(form: FlaskForm, field: DateField) -> None:
    if field.data is not None and field.data <= utcnow().date():
        raise ValidationError("Pick a date after today.")


def end_of_day(day: date | None) -> datetime | None:
    """An expiry date means the key works through that whole day (UTC)."""
    return datetime.combine(day, time.max, tzinfo=UTC) if day else None


class MultiCheckboxField(SelectMultipleField):
    """Several choices as checkboxes (rendered by the form macro)."""

    widget = ListWidget(prefix_label=False)
    option_widget = CheckboxInput()


def _checked_by(parse: object) -> object:
    """A validator from a :mod:`portal.keys.policy` parser: its ValueError becomes the field's error."""

    def validate(form: FlaskForm, field: Field) -> None:
        try:
            parse(field.data)  # type: ignore[operator]
        except ValueError as exc:
            raise ValidationError(str(exc)) from None

    return validate


def within_plan_limit(form: FlaskForm, field: IntegerField) -> None:
    plan_limit = getattr(form, "plan_limit", None)
    if field.data is not None and plan_limit is not None:
        try:
            policy.check_rate_limit(field.data, plan_limit)
        except ValueError as exc:
            raise ValidationError(str(exc)) from None


def _scopes_field() -> MultiCheckboxField:
    return MultiCheckboxField(
        "Scopes",
        choices=choices([(scope, scope_catalogue.LABELS[scope]) for scope in scope_catalogue.SCOPES]),
        description="Leave all unticked for a full-access key. A restricted key may call only what is ticked.",
    )


def _allowed_ips_field() -> TextAreaField:
    return TextAreaField(
        "Allowed addresses",
        validators=[Length(max=5000), _checked_by(policy.parse_cidrs)],  # type: ignore[list-item]
        description=f"IPv4 or IPv6 addresses or networks (CIDR), one per line, up to {policy.MAX_ALLOWED_IPS}. "
        "Empty: any address.",
    )


def _rate_limit_field() -> IntegerField:
    return IntegerField(
        "Requests per minute for this key",
        validators=[Optional(), within_plan_limit],
        description="Optional: a limit for this key alone, at most the plan's. Empty: only the plan's limit.",
    )


def _external_id_field() -> StringField:
    return StringField(
        "External id",
        filters=[strip_filter],
        validators=[_checked_by(policy.parse_external_id)],  # type: ignore[list-item]
        description="Optional: your own identifier for the key (unique in this organization), returned on "
        "every valid verification.",
    )


def _meta_field() -> TextAreaField:
    return TextAreaField(
        "Metadata (JSON)",
        validators=[Length(max=20_000), _checked_by(policy.parse_meta)],  # type: ignore[list-item]
        description=f"Optional: a JSON object of at most {policy.MAX_META_BYTES} bytes, returned as “meta” on "
        "every valid verification.",
    )


class CreateKeyForm(FlaskForm):
    name = StringField(
        "Name", validators=NAME_RULES, filters=[strip_filter], description="What uses this key, e.g. “billing worker”."
    )
    environment = RadioField(
        "Environment",
        choices=choices([("test", "Test (pk_test_…)"), ("live", "Live (pk_live_…)")]),
        default="test",
        validators=[DataRequired()],
        description="Test keys are for development: their calls have their own rate limit. A live key serves "
        "production traffic and real usage; treat it like a password.",
    )
    expires_on = DateField(
        "Expires on (optional, YYYY-MM-DD)",
        validators=[Optional(), future_date],
        description="The key stops working at the end of this day, UTC.",
    )
    scopes = _scopes_field()
    allowed_ips = _allowed_ips_field()
    rate_limit = _rate_limit_field()
    external_id = _external_id_field()
    meta_json = _meta_field()
    request_token = HiddenField()


class RenameKeyForm(FlaskForm):
    name = StringField("Name", validators=NAME_RULES, filters=[strip_filter])


class ExpiryForm(FlaskForm):
    expires_on = DateField(
        "Expires on (YYYY-MM-DD)",
        validators=[Optional(), future_date],
        description="Leave empty for a key that does not expire.",
    )


def _confirm_name_field() -> StringField:
    return StringField(
        "Type the key's name to confirm",
        filters=[strip_filter],
        validators=[Optional(), Length(max=200)],
        description="A live key serves production: type its name exactly as shown above.",
    )


class TypedConfirmation:
    """A live key's destructive action asks for its name typed (``confirm_name``); test keys do not."""

    confirm_name: StringField

    def confirms(self, api_key_name: str, needed: bool) -> bool:
        """Whether the action may go ahead; adds the field's error when the typed name is missing or wrong."""
        if not needed or (self.confirm_name.data or "") == api_key_name:
            return True
        self.confirm_name.errors = [f"Type “{api_key_name}” exactly to confirm."]
        return False


class RevokeKeyForm(TypedConfirmation, FlaskForm):
    confirm_name = _confirm_name_field()


class RollKeyForm(TypedConfirmation, FlaskForm):
    grace = SelectField(
        "Keep the old key working for",
        choices=choices([(name, label) for name, (label, _) in ROLL_GRACE_PERIODS.items()]),
        default="24h",
    )
    confirm_name = _confirm_name_field()


class PolicyForm(FlaskForm):
    """What the key may do: scopes, addresses and its own limit."""

    scopes = _scopes_field()
    allowed_ips = _allowed_ips_field()
    rate_limit = _rate_limit_field()


class DetailsForm(FlaskForm):
    """What valid verifications return about the key."""

    external_id = _external_id_field()
    meta_json = _meta_field()
