from __future__ import annotations

from datetime import UTC, date, datetime, time

from flask_wtf import FlaskForm
from wtforms import DateField, HiddenField, RadioField, SelectField, StringField
from wtforms.validators import DataRequired, Length, Optional, ValidationError

from portal.forms import choices, no_control_chars, strip_filter
from portal.keys.services import ROLL_GRACE_PERIODS
from portal.timeutil import utcnow

NAME_RULES = [DataRequired(), Length(max=100), no_control_chars]


def future_date(form: FlaskForm, field: DateField) -> None:
    if field.data is not None and field.data <= utcnow().date():
        raise ValidationError("Pick a date after today.")


def end_of_day(day: date | None) -> datetime | None:
    """An expiry date means the key works through that whole day (UTC)."""
    return datetime.combine(day, time.max, tzinfo=UTC) if day else None


class CreateKeyForm(FlaskForm):
    name = StringField(
        "Name", validators=NAME_RULES, filters=[strip_filter], description="What uses this key, e.g. “billing worker”."
    )
    environment = RadioField(
        "Environment",
        choices=choices([("test", "Test (pk_test_…)"), ("live", "Live (pk_live_…)")]),
        default="test",
        validators=[DataRequired()],
    )
    expires_on = DateField(
        "Expires on (optional)",
        validators=[Optional(), future_date],
        description="The key stops working at the end of this day, UTC.",
    )
    request_token = HiddenField()


class RenameKeyForm(FlaskForm):
    name = StringField("Name", validators=NAME_RULES, filters=[strip_filter])


class ExpiryForm(FlaskForm):
    expires_on = DateField(
        "Expires on", validators=[Optional(), future_date], description="Leave empty for a key that does not expire."
    )


class RollKeyForm(FlaskForm):
    grace = SelectField(
        "Keep the old key working for",
        choices=choices([(name, label) for name, (label, _) in ROLL_GRACE_PERIODS.items()]),
        default="24h",
    )
