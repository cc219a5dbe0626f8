"""Writing audit events: one call for the web, the CLI and the staff area, with no request behind it."""

from __future__ import annotations

import uuid
from typing import Any

from portal.extensions import db
from portal.models import AuditEvent, User
from portal.notify import events as notify_events


def record(
    action: str,
    *,
    organization_id: uuid.UUID | None,
    actor: User | None,
    target_type: str | None = None,
    target_id: Any = None,
    details: dict[str, Any] | None = None,
    actor_label: str | None = None,
    ip: str | None = None,
) -> AuditEvent:
    """Add an audit event to the current transaction, so it commits (or not) with the change it describes.

    ``ip`` is the client address the caller read from its request; the CLI has none.
    """
    label = actor_label or (f"{actor.display_name} <{actor.email}>" if actor else "system")
    event = AuditEvent(
        organization_id=organization_id,
        actor_id=actor.id if actor else None,
        actor_label=label,
        action=action,
        target_type=target_type,
        target_id=str(target_id) if target_id is not None else None,
        details=details or {},
        ip=ip,
    )
    db.session.add(event)
    notify_events.from_audit(event, actor)  # key and member actions are also notifications, in this transaction
    return event
