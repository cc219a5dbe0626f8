"""Off-boarding: the keys a member created that still work, so whoever removes them (or they, leaving) can
revoke or roll them. A key belongs to the organization and keeps working after its creator leaves; these
functions only make that visible and quick to end.
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa

from portal import audit
from portal.db import org_scoped
from portal.extensions import db
from portal.keys.services import KeyActionError
from portal.models import ApiKey, Organization, User
from portal.timeutil import utcnow

REASON = "member_offboarded"


def active_keys_created_by(org: Organization, user_id: uuid.UUID) -> list[ApiKey]:
    """Keys of ``org`` created by ``user_id`` that can still authenticate (rolled keys in their grace period
    included), live first, newest first."""
    moment = utcnow()
    return list(
        db.session.scalars(
            org_scoped(ApiKey, org.id)
            .where(
                ApiKey.created_by_id == user_id,
                sa.or_(ApiKey.revoked_at.is_(None), ApiKey.revoked_at > moment),
                sa.or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > moment),
            )
            .order_by(ApiKey.environment, ApiKey.created_at.desc(), ApiKey.id)
        )
    )


def revoke_member_keys(
    org: Organization, keys: list[ApiKey], *, creator: User, actor: User, ip: str | None = None
) -> int:
    """Revoke ``keys`` (created by ``creator``) now, one audit event each; returns how many were revoked.

    Keys that stopped working meanwhile are skipped; the rows are locked so two admins revoking at once
    record one revocation per key."""
    if not keys:
        return 0
    moment = utcnow()
    locked = db.session.scalars(
        org_scoped(ApiKey, org.id)
        .where(ApiKey.id.in_([k.id for k in keys]), ApiKey.created_by_id == creator.id)
        .order_by(ApiKey.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).all()
    revoked = 0
    for api_key in locked:
        if api_key.status_at(moment) not in ("active", "expiring"):
            continue
        api_key.revoked_at = moment
        api_key.revoked_by_id = actor.id
        audit.record(
            "key.revoked",
            organization_id=org.id,
            actor=actor,
            target_type="api_key",
            target_id=api_key.id,
            details={"name": api_key.name, "hint": api_key.hint, "reason": REASON, "created_by": creator.email},
            ip=ip,
        )
        revoked += 1
    if not revoked:
        db.session.rollback()
        raise KeyActionError("These keys are already revoked.")
    db.session.commit()
    return revoked
