"""How audit events read on a page: a plain-language action, a target and the details as label/value pairs."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from flask.sansio.app import App

from portal.extensions import db
from portal.models import ApiKey, AuditEvent, Invitation, Membership, Organization, User

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
    "org.deleted": "Organization deleted",
    "notifications.changed": "Notification settings changed",
    "webhook.created": "Webhook endpoint added",
    "webhook.updated": "Webhook endpoint changed",
    "webhook.paused": "Webhook endpoint paused",
    "webhook.resumed": "Webhook endpoint resumed",
    "webhook.enabled": "Webhook endpoint enabled again",
    "webhook.secret_rotated": "Webhook signing secret rotated",
    "webhook.deleted": "Webhook endpoint deleted",
    "webhook.test_sent": "Webhook test event sent",
    "webhook.resent": "Webhook delivery resent",
    "webhook.disabled": "Webhook endpoint disabled after failing deliveries",
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
    "slug": "Address",
    "keys_revoked": "Keys revoked",
    "members": "Members removed",
    "created_by": "Created by",
    "events": "Events",
    "description": "Description",
    "previous_url": "Previous URL",
    "overlap": "Old secret kept signing for",
    "previous_secret_until": "Old secret signs until",
    "event_type": "Event",
    "event_id": "Event id",
    "previous_status": "Delivery had",
    "dropped": "Unsent deliveries dropped",
}
# Stored codes shown as words.
VALUE_LABELS: dict[str, str] = {
    "reported_leaked": "reported leaked",
    "revocation_api": "public revocation API",
    "secret_scanning": "GitHub secret scanning",
    "member_offboarded": "member off-boarded",
    "notify": "tell the owners",
    "revoke": "revoke and tell the owners",
    "organization_deleted": "organization deleted",
    "inviter lost access": "inviter lost access",
}
# Ids kept so targets can be found again; a page never shows a raw id.
HIDDEN_DETAILS: frozenset[str] = frozenset({"request_token", "user_id", "invitation_id", "new_key_id"})
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


TargetNames = dict[tuple[str, str], str]
TargetQuery = sa.Select[str, uuid.UUID, str]  # kind, id, label


def _name_and_hint(name: object, hint: object) -> str:
    return " · ".join(str(part) for part in (name, hint) if part)


def _from_details(event: AuditEvent) -> str | None:
    """The target as the event recorded it, for targets that are gone (a removed member, a deleted org)."""
    details = event.details or {}
    if event.target_type == "api_key":
        return _name_and_hint(details.get("name"), details.get("hint") or details.get("old_hint")) or None
    if event.target_type in ("membership", "user"):
        return _name_and_hint(details.get("name"), details.get("email")) or None
    if event.target_type == "invitation":
        return f"Invitation for {details['email']}" if details.get("email") else None
    if event.target_type == "organization":
        return str(details["name"]) if details.get("name") else None
    if event.target_type == "webhook_endpoint":
        return str(details["url"]) if details.get("url") else None  # the URL as it was then
    return None


def target_label(event: AuditEvent, names: TargetNames | None = None) -> str:
    """A name and hint for what the event is about, never a raw id: the target as it is now (``names``, from
    :func:`target_names`), else as the event recorded it, else its kind."""
    if names and event.target_type and event.target_id:
        found = names.get((event.target_type, event.target_id))
        if found:
            return found
    recorded = _from_details(event)
    if recorded:
        return recorded
    details = event.details or {}
    for field in TARGET_FIELDS:
        if details.get(field):
            return str(details[field])
    return (event.target_type or "—").replace("_", " ")


def target_names(events: Sequence[AuditEvent]) -> TargetNames:
    """The current name and hint of every target on a page of events, read in one query (a UNION over the
    kinds of target), so a page of 50 events costs one round trip, not 50."""
    wanted: dict[str, set[uuid.UUID]] = {}
    for event in events:
        if event.target_type in _TARGET_QUERIES and event.target_id:
            try:
                wanted.setdefault(event.target_type, set()).add(uuid.UUID(event.target_id))
            except ValueError:
                continue
    if not wanted:
        return {}
    parts = [_TARGET_QUERIES[kind](sorted(ids)) for kind, ids in wanted.items()]
    rows = db.session.execute(sa.union_all(*parts)).all()
    return {(kind, str(target_id)): label for kind, target_id, label in rows if label}


def _key_names(ids: list[uuid.UUID]) -> TargetQuery:
    label = ApiKey.name + " · " + ApiKey.hint
    return sa.select(sa.literal("api_key"), ApiKey.id, label).where(ApiKey.id.in_(ids))


def _membership_names(ids: list[uuid.UUID]) -> TargetQuery:
    label = User.display_name + " · " + User.email
    return sa.select(sa.literal("membership"), Membership.id, label).join(User).where(Membership.id.in_(ids))


def _user_names(ids: list[uuid.UUID]) -> TargetQuery:
    label = User.display_name + " · " + User.email
    return sa.select(sa.literal("user"), User.id, label).where(User.id.in_(ids))


def _invitation_names(ids: list[uuid.UUID]) -> TargetQuery:
    label = sa.case(
        (Invitation.email.is_not(None), "Invitation for " + Invitation.email),
        else_="Invite link for a " + Invitation.role,
    )
    return sa.select(sa.literal("invitation"), Invitation.id, label).where(Invitation.id.in_(ids))


def _organization_names(ids: list[uuid.UUID]) -> TargetQuery:
    return sa.select(sa.literal("organization"), Organization.id, Organization.name).where(Organization.id.in_(ids))


_TARGET_QUERIES: dict[str, Callable[[list[uuid.UUID]], TargetQuery]] = {
    "api_key": _key_names,
    "membership": _membership_names,
    "user": _user_names,
    "invitation": _invitation_names,
    "organization": _organization_names,
}


def detail_pairs(event: AuditEvent) -> list[tuple[str, str]]:
    """The details as (label, value) pairs; a ``from``/``to`` pair reads as one change ``a → b``."""
    details = dict(event.details or {})
    shown = next((f for f in TARGET_FIELDS if details.get(f)), None)
    if shown:
        details.pop(shown)
    if event.target_type in ("api_key", "membership", "user") and shown == "hint":
        details.pop("name", None)  # both are in the target column
    if event.target_type in ("membership", "user") and shown == "email":
        details.pop("name", None)
    if event.target_type == "webhook_endpoint":
        details.pop("url", None)  # in the target column
    pairs: list[tuple[str, str]] = []
    if "from" in details and "to" in details:
        pairs.append(("Change", f"{_readable(details.pop('from'))} → {_readable(details.pop('to'))}"))
    for key, value in details.items():
        if key in HIDDEN_DETAILS or value is None or value == "":
            continue
        pairs.append((DETAIL_LABELS.get(key, key.replace("_", " ").capitalize()), _readable(value)))
    return pairs


def register(app: App) -> None:
    app.jinja_env.filters["action_label"] = action_label
    app.jinja_env.filters["audit_target"] = target_label
    app.jinja_env.filters["audit_details"] = detail_pairs
