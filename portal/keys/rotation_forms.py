"""Forms of the rotation watch on a rolled key's page (portal/keys/rotation.py)."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import IntegerField
from wtforms.validators import InputRequired, NumberRange

from portal.keys.rotation import DEFAULT_QUIET_HOURS, MAX_GRACE, MAX_QUIET_HOURS


class QuietHoursForm(FlaskForm):
    """How many hours without calls make the old key safe to revoke: a GET form, it changes nothing."""

    class Meta:
        csrf = False

    quiet_hours = IntegerField(
        "Safe to revoke after (hours without calls)",
        default=DEFAULT_QUIET_HOURS,
        validators=[InputRequired(), NumberRange(min=1, max=MAX_QUIET_HOURS)],
    )


class ExtendGraceForm(FlaskForm):
    extend_hours = IntegerField(
        "Keep the old key working (hours more)",
        default=24,
        validators=[InputRequired(), NumberRange(min=1, max=MAX_GRACE.days * 24)],
        description=f"At most {MAX_GRACE.days} days from now in all.",
    )
