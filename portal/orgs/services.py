"""Organization-level changes: plans, members, invitations."""

from __future__ import annotations

from portal import audit
from portal.extensions import db
from portal.models import Organization, User
from portal.plans import PLANS


class OrgActionError(Exception):
    """An organization change that cannot be done; the message is shown to the user."""


def change_plan(org: Organization, plan: str, *, reason: str, actor: User | None,
                actor_label: str | None = None) -> None:
    if plan not in PLANS:
        raise OrgActionError(f"Unknown plan {plan!r}.")
    old = org.plan
    org.plan = plan
    audit.record("plan.changed", organization_id=org.id, actor=actor, actor_label=actor_label,
                 target_type="organization", target_id=org.id, details={"from": old, "to": plan, "reason": reason})
    db.session.commit()
