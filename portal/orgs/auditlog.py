"""How audit events read on a page: a plain-language action, a target and the details as label/value pairs."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from flask.sansio.app import App

from portal.models import AuditEvent

ACTION_LABELS: dict[str, str] = {
    "org.created": "Organization created",
    "org.renamed": "Organization renamed",
    "plan.changed": "Plan changed",
    "member.invited": "Member invited",
    "member.joined": "Member joined",
    "member.role_changed": "Role changed",
    "member.removed": "Member removed",
    "invitation.revoked": "Invitation revoked",
    "key.created": "Key created",
    "key.renamed": "Key renamed",
    "key.expiry_changed": "Key expiry changed",
    "key.revoked": "Key revoked",
    "key.rolled": "Key rolled",
    "key.leak_reported": "Key reported leaked",
    "key.grace_extended": "Rolled key's grace period extended",
    "org.leak_action_changed": "Leak response changed",
    "key.policy_changed": "Key policy changed",
    "key.details_changed": "Key metadata changed",
    "org.quota_extended": "Monthly quota extended",
    "user.password_changed": "Password changed",
    "org.two_factor_required": "Two-factor required for members",
    "org.two_factor_optional": "Two-factor no longer required",
    "user.password_reset": "Password reset",
    "user.password_reset_sent": "Password reset link sent",
}

DETAIL_LABELS: dict[str, str] = {
    "from": "From",
    "to": "To",
    "reason": "Reason",
    "role": "Role",
    "email": "Email",
    "name": "Name",
    "hint": "Key",
    "environment": "Environment",
    "expires_at": "Expires",
    "old_hint": "Old key",
    "new_hint": "New key",
    "old_key_stops_at": "Old key stops",
    "invitation_id": "Invitation",
    "new_key_id": "New key id",
    "source": "Reported through",
    "url": "Found at",
    "scopes": "Scopes",
    "allowed_ips": "Allowed addresses",
    "rate_limit": "Requests per minute",
    "changed": "Changed",
    "external_id": "External id",
    "calls": "Extra calls",
    "month": "Month",
}
# Stored codes shown as words.
VALUE_LABELS: dict[str, str] = {
    "reported_leaked": "reported leaked",
    "revocation_api": "public revocation API",
    "secret_scanning": "GitHub secret scanning",
    "member_offboarded": "member off-boarded",
    "notify": "tell the owners",
    "revoke": "revoke and tell the owners",
}
# Shown in the target column rather than repeated among the details.
TARGET_FIELDS: tuple[str, ...] = ("hint", "email", "name")


def action_label(action: str) -> str:
    return ACTION_LABELS.get(action, action)


def _readable(value: Any) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, str):
        if value in VALUE_LABELS:
            return VALUE_LABELS[value]
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return value
        if moment.tzinfo is not None and "T" in value:
            return moment.strftime("%Y-%m-%d %H:%M UTC")
        return value
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, sort_keys=True)


def target_label(event: AuditEvent) -> str:
    """A human name for what the event is about: a key's hint, a member's email, else its kind."""
    details = event.details or {}
    for field in TARGET_FIELDS:
        if details.get(field):
            return str(details[field])
    return (event.target_type or "—").replace("_", " ")


def detail_pairs(event: AuditEvent) -> list[tuple[str, str]]:
    """The details as (label, value) pairs; a ``from``/``to`` pair reads as one change ``a → b``."""
    details = dict(event.details or {})
    shown = next((f for f in TARGET_FIELDS if details.get(f)), None)
    if shown:
        details.pop(shown)
    pairs: list[tuple[str, str]] = []
    if "from" in details and "to" in details:
        pairs.append(("Change", f"{_readable(details.pop('from'))} → {_readable(details.pop('to'))}"))
    for key, value in details.items():
        if key == "request_token" or value is None or value == "":
            continue
        pairs.append((DETAIL_LABELS.get(key, key.replace("_", " ").capitalize()), _readable(value)))
    return pairs


def register(app: App) -> None:
    app.jinja_env.filters["action_label"] = action_label
    app.jinja_env.filters["audit_target"] = target_label
    app.jinja_env.filters["audit_details"] = detail_pairs
