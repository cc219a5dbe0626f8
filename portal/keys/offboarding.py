"""Off-boarding: the keys a member created that still work, so whoever removes them (or they, leaving) can
revoke or roll them. A key belongs to the organization and keeps working after its creator leaves; these
functions only make that visible and quick to end.
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa

from portal.db import org_scoped
from portal.extensions import db
from portal.models import ApiKey, Organization
from portal.timeutil import utcnow


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
