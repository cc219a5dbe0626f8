"""Forms of the notification settings and webhook pages. Validators call the services' own checks, so a form
and ``flask webhooks`` refuse the same input with the same words."""

from __future__ import annotations

from typing import Any

from flask_wtf import FlaskForm
from wtforms import Field, HiddenField, IntegerField, SelectField, StringField, TextAreaField, URLField
from wtforms.validators import DataRequired, Length, NumberRange, Optional, ValidationError

from portal.forms import choices, no_control_chars, strip_filter
from portal.keys.forms import MultiCheckboxField
from portal.notify import rules, webhooks
from portal.notify.catalogue import ALL_EVENTS, AUDIENCES, EVENTS, EventType
from portal.notify.destinations import MAX_URL_LENGTH


def field_key(event_name: str) -> str:
    """The form field suffix of an event: ``key.created`` → ``key_created``."""
    return event_name.replace(".", "_")


def _valid_addresses(form: Any, field: Field) -> None:
    try:
        rules.parse_addresses(field.data)
    except ValueError as exc:
        raise ValidationError(str(exc)) from None


class NotificationSettingsForm(FlaskForm):
    """Who each organization event is mailed to (``audience_<event>``, ``addresses_<event>``, one pair per
    catalogue event, added below) and the idle-key threshold."""

    idle_key_days = IntegerField(
        "Report a key idle after this many days without calls",
        validators=[
            Optional(),
            NumberRange(
                rules.IDLE_DAYS_MIN,
                rules.IDLE_DAYS_MAX,
                message=f"Enter a number of days from {rules.IDLE_DAYS_MIN} to {rules.IDLE_DAYS_MAX}, "
                "or leave it empty for off.",
            ),
        ],
        description=f"{rules.IDLE_DAYS_MIN} to {rules.IDLE_DAYS_MAX} days. Empty: off, no key is reported idle.",
    )

    def event_fields(self, event_name: str) -> tuple[Field, Field]:
        key = field_key(event_name)
        return self[f"audience_{key}"], self[f"addresses_{key}"]

    def chosen(self) -> dict[str, rules.Choice]:
        """The choices as the service takes them (call after validation)."""
        picked = {}
        for name in EVENTS:
            audience, addresses = self.event_fields(name)
            picked[name] = rules.Choice(audience.data, rules.parse_addresses(addresses.data))
        return picked

    @staticmethod
    def initial(org_rules: list[rules.MailRule], idle_key_days: int | None) -> dict[str, Any]:
        data: dict[str, Any] = {"idle_key_days": idle_key_days}
        for rule in org_rules:
            key = field_key(rule.event.name)
            data[f"audience_{key}"] = rule.audience
            data[f"addresses_{key}"] = "\n".join(rule.addresses)
        return data


def _audience_label(audience: str, event: EventType) -> str:
    label = AUDIENCES[audience]
    return f"{label} (default)" if audience == event.default_audience else label


for _event in EVENTS.values():
    _key = field_key(_event.name)
    setattr(
        NotificationSettingsForm,
        f"audience_{_key}",
        SelectField(
            f"Mail “{_event.label}” to",
            choices=choices(
                [
                    (name, f"{label} (default)" if name == _event.default_audience else label)
                    for name, label in AUDIENCES.items()
                ]
            ),
            default=_event.default_audience,
            validators=[DataRequired()],
        ),
    )
    setattr(
        NotificationSettingsForm,
        f"addresses_{_key}",
        TextAreaField(
            f"Also mail “{_event.label}” to these addresses",
            validators=[Length(max=rules.MAX_ADDRESSES * (rules.MAX_ADDRESS_LENGTH + 2)), _valid_addresses],
            render_kw={"rows": 2},
            description=f"Optional: up to {rules.MAX_ADDRESSES} addresses (a team list, an on-call alias), one per "
            "line or separated by commas.",
        ),
    )


EVENT_CHOICES = [
    (ALL_EVENTS, "All events, including ones added later"),
    *((event.name, f"{event.label} ({event.name})") for event in EVENTS.values()),
]


def _safe_url(form: Any, field: Field) -> None:
    if field.data:
        try:
            webhooks.checked_url(field.data)
        except webhooks.WebhookError as exc:
            raise ValidationError(str(exc)) from None


def _known_events(form: Any, field: Field) -> None:
    if not field.data:
        raise ValidationError("Tick the events to send, or “All events”.")
    try:
        webhooks.checked_events(field.data)
    except webhooks.WebhookError as exc:
        raise ValidationError(str(exc)) from None


class WebhookForm(FlaskForm):
    """An endpoint's URL, description and events (the edit form on the endpoint page)."""

    url = URLField(
        "Endpoint URL",
        filters=[strip_filter],
        validators=[DataRequired(message="Enter the URL that receives the events."), _safe_url],
        render_kw={"maxlength": MAX_URL_LENGTH, "inputmode": "url", "autocomplete": "off"},
        description="An https address that answers 2xx to a signed POST, such as https://example.com/webhooks.",
    )
    description = StringField(
        "Description (optional)",
        filters=[strip_filter],
        validators=[Length(max=webhooks.MAX_DESCRIPTION), no_control_chars],
        description="What receives these events, for your team.",
    )
    events = MultiCheckboxField(
        "Events to send",
        choices=choices(EVENT_CHOICES),
        validate_choice=False,  # _known_events names the unknown event instead of a generic message
        validators=[_known_events],
    )


class NewWebhookForm(WebhookForm):
    request_token = HiddenField()


class RotateSecretForm(FlaskForm):
    overlap = SelectField(
        "Keep the old secret signing for",
        choices=choices([(name, label) for name, (label, _) in webhooks.OVERLAPS.items()]),
        default=webhooks.DEFAULT_OVERLAP,
        description="During the overlap each delivery carries a signature by each secret, so a receiver still "
        "holding the old one keeps verifying until it has the new one.",
    )
    request_token = HiddenField()
