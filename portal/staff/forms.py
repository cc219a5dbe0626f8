"""Forms of the staff area."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import IntegerField, SelectField, StringField
from wtforms.validators import DataRequired, InputRequired, Length, NumberRange

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


class QuotaExtensionForm(FlaskForm):
    calls = IntegerField(
        "Extra calls this month",
        validators=[InputRequired(), NumberRange(min=1, max=100_000_000)],
        description="Added to this UTC month's quota only; it ends with the month.",
    )
    reason = StringField(
        "Reason",
        validators=[DataRequired(), Length(min=3, max=500), no_control_chars],
        filters=[strip_filter],
        description="Kept in the organization's audit log, which its members can read.",
    )
