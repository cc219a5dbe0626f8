"""An organization's notification settings: who each event is mailed to, and after how many days without calls
a key is reported idle. The settings page's behaviour, without a Flask request.

A rule row exists only for an event whose choice differs from the catalogue's default: saving the default
deletes the row, so an organization that never chose follows the catalogue (``events.mail_recipients`` reads a
missing row as the default).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from email_validator import EmailNotValidError, validate_email

from portal import audit, identity
from portal.db import org_scoped
from portal.extensions import db
from portal.models import NotificationRule, Organization, User
from portal.notify.catalogue import AUDIENCES, EVENTS, EventType

MAX_ADDRESSES = 10
MAX_ADDRESS_LENGTH = 254
IDLE_DAYS_MIN, IDLE_DAYS_MAX = 1, 365
_SEPARATORS = re.compile(r"[\s,;]+")


class SettingsError(ValueError):
    """A setting that cannot be saved; ``field`` names the form field it belongs to (None: the whole form)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class MailRule:
    """Who one event is mailed to in an organization: its audience and extra listed addresses."""

    event: EventType
    audience: str
    addresses: tuple[str, ...]

    @property
    def is_default(self) -> bool:
        return self.audience == self.event.default_audience and not self.addresses


@dataclass(frozen=True)
class Choice:
    """What the settings page (or a caller) chose for one event."""

    audience: str
    addresses: tuple[str, ...] = ()


def mail_rules(org: Organization) -> list[MailRule]:
    """Every organization event of the catalogue, in catalogue order, with the organization's choice or the default."""
    rows = {rule.event_type: rule for rule in db.session.scalars(org_scoped(NotificationRule, org.id))}
    rules = []
    for event in EVENTS.values():
        row = rows.get(event.name)
        if row is None:
            rules.append(MailRule(event, event.default_audience, ()))
        else:
            rules.append(MailRule(event, row.audience, tuple(row.addresses or ())))
    return rules


def parse_addresses(text: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """Mail addresses from text (one per line, or separated by commas, semicolons or spaces), normalised and
    deduplicated; ValueError names the first that is not an address, or says when there are too many."""
    parts = text if isinstance(text, list | tuple) else _SEPARATORS.split(text or "")
    found: list[str] = []
    for part in parts:
        address = identity.normalize_email(part)
        if not address or address in found:
            continue
        reason = identity.problem(address)
        if reason is not None:
            raise ValueError(f"“{address}”: {reason}")
        if len(address) > MAX_ADDRESS_LENGTH:
            raise ValueError(f"“{address[:40]}…” is longer than {MAX_ADDRESS_LENGTH} characters.")
        try:
            validate_email(address, check_deliverability=False)
        except EmailNotValidError:
            raise ValueError(f"“{address}” is not a mail address, such as oncall@example.com.") from None
        found.append(address)
    if len(found) > MAX_ADDRESSES:
        raise ValueError(f"List at most {MAX_ADDRESSES} addresses ({len(found)} given).")
    return tuple(found)


def check_idle_days(days: int | None) -> int | None:
    if days is not None and not IDLE_DAYS_MIN <= days <= IDLE_DAYS_MAX:
        raise ValueError(f"Enter a number of days from {IDLE_DAYS_MIN} to {IDLE_DAYS_MAX}, or leave it empty for off.")
    return days


def _idle_text(days: int | None) -> str:
    return "off" if days is None else f"after {days} day{'s' if days != 1 else ''}"


def _addresses_text(addresses: tuple[str, ...]) -> str:
    return ", ".join(addresses) if addresses else "none"


def save(
    org: Organization,
    choices: dict[str, Choice],
    idle_key_days: int | None,
    actor: User | None,
    *,
    actor_label: str | None = None,
    ip: str | None = None,
) -> list[str]:
    """Store the choices (events left out keep theirs) and the idle threshold, audit what changed as
    ``notifications.changed`` and commit. Returns the changes, in words; nothing changed, nothing is written."""
    try:
        idle_key_days = check_idle_days(idle_key_days)
    except ValueError as exc:
        raise SettingsError(str(exc), "idle_key_days") from None
    checked: dict[str, Choice] = {}
    for name, given in choices.items():
        if name not in EVENTS:
            raise SettingsError(f"Unknown event {name!r}.")
        if given.audience not in AUDIENCES:
            raise SettingsError(f"Choose who gets mail about {EVENTS[name].label}.", name)
        try:
            checked[name] = Choice(given.audience, parse_addresses(given.addresses))
        except ValueError as exc:
            raise SettingsError(str(exc), name) from None

    changes: list[str] = []
    rows = {rule.event_type: rule for rule in db.session.scalars(org_scoped(NotificationRule, org.id))}
    for rule in mail_rules(org):
        if rule.event.name not in checked:
            continue
        choice = checked[rule.event.name]
        label = rule.event.label
        if choice.audience != rule.audience:
            changes.append(f"{label}: mailed to {AUDIENCES[rule.audience]} → {AUDIENCES[choice.audience]}")
        if choice.addresses != rule.addresses:
            changes.append(
                f"{label}: also mailed to {_addresses_text(rule.addresses)} → {_addresses_text(choice.addresses)}"
            )
        if choice.audience == rule.audience and choice.addresses == rule.addresses:
            continue
        row = rows.get(rule.event.name)
        if choice.audience == rule.event.default_audience and not choice.addresses:
            if row is not None:
                db.session.delete(row)
        elif row is None:
            db.session.add(
                NotificationRule(
                    organization_id=org.id,
                    event_type=rule.event.name,
                    audience=choice.audience,
                    addresses=list(choice.addresses),
                )
            )
        else:
            row.audience = choice.audience
            row.addresses = list(choice.addresses)
    if idle_key_days != org.idle_key_days:
        changes.append(f"Idle keys reported: {_idle_text(org.idle_key_days)} → {_idle_text(idle_key_days)}")
        org.idle_key_days = idle_key_days
    if not changes:
        return []
    audit.record(
        "notifications.changed",
        organization_id=org.id,
        actor=actor,
        actor_label=actor_label,
        target_type="notification_settings",
        details={"changed": "; ".join(changes)},
        ip=ip,
    )
    db.session.commit()
    return changes
