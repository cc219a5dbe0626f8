"""An organization's life from a member's side: the one they used last, leaving it or being removed from it,
and its deletion by an owner.

A deleted organization keeps its row (``deleted_at``), slug and audit trail, so support staff still see what
happened and the slug is never handed to another organization; its keys are revoked and its members removed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from portal import audit
from portal.db import org_scoped
from portal.extensions import db
from portal.keys import services as key_services
from portal.models import ApiKey, AuditEvent, Invitation, Membership, Organization, User
from portal.orgs.services import NotAllowed, OrgActionError, find_org, member_details
from portal.roles import role_allows
from portal.timeutil import utcnow

REASON_DELETED = "organization_deleted"
# Keys created while the deletion revoked others are revoked on the next pass; a pass finds none in practice.
MAX_REVOKE_PASSES = 3


def remember_org(user: User, org: Organization) -> None:
    """Note ``org`` as the one ``user`` used last, in its own small transaction (signing in again lands there)."""
    db.session.execute(sa.update(User).where(User.id == user.id).values(last_organization_id=org.id))
    db.session.commit()


def landing_membership(user: User, memberships: list[Membership]) -> Membership | None:
    """Where ``user`` goes after signing in: the organization they used last, else their first one."""
    last = next((m for m in memberships if m.organization_id == user.last_organization_id), None)
    return last or (memberships[0] if memberships else None)


@dataclass(frozen=True)
class Departure:
    """Why a former member no longer reaches an organization: left, removed, or the organization was deleted."""

    org_name: str
    at: datetime
    by: str
    left: bool
    deleted: bool


def departure(slug: str, user: User) -> Departure | None:
    """The latest time ``user`` stopped being a member of ``slug``, from its audit trail; ``None`` when they
    never were one, so an organization they never belonged to still looks absent."""
    org = find_org(slug)
    if org is None:
        return None
    details = AuditEvent.details
    # Events written before removals carried the account's id name it by address only.
    by_address = sa.and_(
        sa.not_(details.has_key("user_id")), sa.func.lower(details["email"].astext) == user.email.lower()
    )
    event = db.session.scalar(
        org_scoped(AuditEvent, org.id)
        .where(
            AuditEvent.action == "member.removed",
            sa.or_(details["user_id"].astext == str(user.id), by_address),
        )
        .order_by(AuditEvent.created_at.desc())
        .limit(1)
    )
    if event is None:
        return None
    deleted = org.deleted_at is not None
    return Departure(
        org_name=org.name,
        at=event.created_at,
        by=event.actor_label,
        left=event.actor_id == user.id and not deleted,
        deleted=deleted,
    )


# Deleting an organization ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeletionImpact:
    """What deleting an organization ends, shown on the page that asks for confirmation."""

    live_keys: int
    test_keys: int
    members: int
    invitations: int


def _unrevoked_keys(org: Organization) -> list[ApiKey]:
    """Keys that do not answer ``revoked`` yet: working ones, rolled ones in their grace period, expired ones."""
    moment = utcnow()
    return list(
        db.session.scalars(
            org_scoped(ApiKey, org.id)
            .where(sa.or_(ApiKey.revoked_at.is_(None), ApiKey.revoked_at > moment))
            .order_by(ApiKey.created_at, ApiKey.id)
        )
    )


def _pending_invitations(org: Organization) -> sa.Select[Any]:
    return org_scoped(Invitation, org.id).where(Invitation.accepted_at.is_(None), Invitation.revoked_at.is_(None))


def deletion_impact(org: Organization) -> DeletionImpact:
    keys = _unrevoked_keys(org)
    live = sum(1 for k in keys if k.environment == "live")
    members = db.session.scalar(
        sa.select(sa.func.count()).select_from(Membership).where(Membership.organization_id == org.id)
    )
    invitations = db.session.scalar(sa.select(sa.func.count()).select_from(_pending_invitations(org).subquery()))
    return DeletionImpact(live, len(keys) - live, int(members or 0), int(invitations or 0))


def confirmation_matches(org: Organization, typed: str | None) -> bool:
    """The owner typed the organization's name or its slug (spaces around it and letter case aside)."""
    text = (typed or "").strip().casefold()
    return bool(text) and text in (org.name.strip().casefold(), org.slug.casefold())


def delete_org(org: Organization, *, actor: User, actor_membership: Membership, ip: str | None = None) -> int:
    """Delete ``org``: revoke every key first (through the key service, so each revocation is audited and
    verification answers ``revoked``), then in one transaction revoke pending invitations, remove every member
    and mark the organization deleted. Returns how many keys were revoked."""
    if not role_allows(actor_membership.role, "org.settings"):
        raise NotAllowed(f"Your role ({actor_membership.role}) cannot delete the organization.")
    if org.deleted_at is not None:
        raise OrgActionError(f"{org.name} is already deleted.")
    revoked = 0
    for _ in range(MAX_REVOKE_PASSES):
        for api_key in _unrevoked_keys(org):
            try:
                key_services.revoke_key(org, api_key, actor, ip=ip)
            except key_services.KeyActionError:  # revoked a moment ago by someone else
                continue
            revoked += 1
        key_services.lock_organization(org)  # no key is created while the rest of the deletion commits
        db.session.refresh(org)
        if org.deleted_at is not None:
            db.session.rollback()
            raise OrgActionError(f"{org.name} is already deleted.")
        if not _unrevoked_keys(org):
            break
        db.session.rollback()
    else:
        raise OrgActionError("Keys are being created while the organization is deleted. Try again.")
    moment = utcnow()
    invitations: list[Invitation] = list(db.session.scalars(_pending_invitations(org)))
    for invitation in invitations:
        invitation.revoked_at = moment
        audit.record(
            "invitation.revoked",
            organization_id=org.id,
            actor=actor,
            target_type="invitation",
            target_id=invitation.id,
            details={"role": invitation.role, "email": invitation.email, "reason": REASON_DELETED},
            ip=ip,
        )
    memberships = db.session.scalars(
        org_scoped(Membership, org.id).join(Membership.user).order_by(User.email).with_for_update()
    ).all()
    for membership in memberships:
        audit.record(
            "member.removed",
            organization_id=org.id,
            actor=actor,
            target_type="membership",
            target_id=membership.id,
            details={**member_details(membership), "role": membership.role, "reason": REASON_DELETED},
            ip=ip,
        )
        db.session.delete(membership)
    org.deleted_at = moment
    audit.record(
        "org.deleted",
        organization_id=org.id,
        actor=actor,
        target_type="organization",
        target_id=org.id,
        details={"name": org.name, "slug": org.slug, "keys_revoked": revoked, "members": len(memberships)},
        ip=ip,
    )
    db.session.commit()
    return revoked
