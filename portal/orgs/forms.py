"""Forms for organizations, members and invitations."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import DateField, EmailField, RadioField, SelectField, StringField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, Email, Length, Optional, ValidationError

from portal.forms import choices, email_filter, identity_text, no_control_chars, strip_filter
from portal.roles import ROLES

ROLE_LABELS: dict[str, str] = {
    "owner": "Owner — everything, including settings",
    "admin": "Admin — members and live keys",
    "developer": "Developer — test keys",
    "viewer": "Viewer — read only",
}


def role_choices(grantable: tuple[str, ...] = ROLES) -> list[SelectChoice]:
    return choices([(role, role.capitalize()) for role in grantable])


class OrgNameForm(FlaskForm):
    name = StringField(
        "Organization name",
        validators=[DataRequired(), Length(max=100), no_control_chars, identity_text],
        filters=[strip_filter],
    )


class RoleForm(FlaskForm):
    role = SelectField("Role", choices=role_choices(), validators=[DataRequired()])


class InviteForm(FlaskForm):
    role = SelectField(
        "Role", choices=choices([(r, ROLE_LABELS[r]) for r in ROLES]), default="developer", validators=[DataRequired()]
    )
    email = EmailField(
        "Email (optional)",
        validators=[Optional(), Length(max=254), Email(check_deliverability=False), identity_text],
        filters=[email_filter],
        description="If set, we mail the link there, and only the account with this email can use it.",
    )


class LeakActionForm(FlaskForm):
    """What a secret-scanning report of one of the organization's keys does (portal/keys/leaks.py)."""

    action = RadioField("When a key is reported leaked", validators=[DataRequired()])

    def __init__(self, *args: object, **kwargs: object) -> None:
        from portal.keys.leaks import LEAK_ACTION_LABELS

        super().__init__(*args, **kwargs)
        self.action.choices = choices(list(LEAK_ACTION_LABELS.items()))


class DeleteOrgForm(FlaskForm):
    """Deleting an organization asks for its name or slug to be typed, so it is never a slip of the mouse."""

    confirmation = StringField(
        "Type the organization's name or its address to confirm",
        validators=[DataRequired(message="Type the name or the address to confirm."), Length(max=100)],
        filters=[strip_filter],
    )


class AuditFilterForm(FlaskForm):
    """The audit log's filters, read from the query string (a GET: nothing changes, so no CSRF token)."""

    class Meta:
        csrf = False

    actor = SelectField("Who", validators=[Optional()], validate_choice=True)
    action = SelectField("What", validators=[Optional()], validate_choice=True)
    since = DateField("From (YYYY-MM-DD)", validators=[Optional()])
    until = DateField("To (YYYY-MM-DD, inclusive)", validators=[Optional()])

    def validate_until(self, field: DateField) -> None:
        if field.data and self.since.data and field.data < self.since.data:
            raise ValidationError("The end date is before the start date.")
