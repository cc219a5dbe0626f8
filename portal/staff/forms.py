"""Forms of the staff area."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import SelectField, StringField
from wtforms.validators import DataRequired, Length

from portal.forms import choices, no_control_chars, strip_filter
from portal.plans import PLANS


class PlanChangeForm(FlaskForm):
    plan = SelectField(
        "New plan",
        choices=choices([(p.name, f"{p.label} ({p.price_label})") for p in PLANS.values()]),
        validators=[DataRequired()],
    )
    reason = StringField(
        "Reason",
        validators=[DataRequired(), Length(min=3, max=500), no_control_chars],
        filters=[strip_filter],
        description="Kept in the organization's audit log, which its members can read.",
    )
