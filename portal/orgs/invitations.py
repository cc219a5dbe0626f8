"""Invite links: made by a member who may grant the role, revoked, and accepted in one locked transaction."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from portal import audit, mail
from portal.db import org_scoped
from portal.extensions import db
from portal.models import Invitation, Membership, Organization, User
from portal.orgs.services import NotAllowed, OrgActionError, inviter_may_grant, membership_of
from portal.roles import ROLES, may_touch_role, needs_verified_email, role_allows
from portal.security import new_token, token_digest
from portal.timeutil import utcnow


class InviteState(enum.Enum):
    """Where an invitation stands; only ``PENDING`` can be accepted or revoked."""

    PENDING = "pending"
    ACCEPTED = "accepted"
    REVOKED = "revoked"
    EXPIRED = "expired"


@dataclass(frozen=True)
class IssuedInvitation:
    """A new invitation and its token, which exists only until the page showing the link is sent."""

    invitation: Invitation
    token: str


def invite_state(invitation: Invitation, moment: datetime | None = None) -> InviteState:
    if invitation.accepted_at is not None:
        return InviteState.ACCEPTED
    if invitation.revoked_at is not None:
        return InviteState.REVOKED
    if invitation.expires_at <= (moment or utcnow()):
        return InviteState.EXPIRED
    return InviteState.PENDING


def create_invitation(
    org: Organization,
    *,
    role: str,
    email: str | None,
    ttl: timedelta,
    actor: User,
    actor_membership: Membership,
    ip: str | None = None,
) -> IssuedInvitation:
    """An invite link for ``role``; only the token's SHA-256 is stored, so the link cannot be shown again."""
    if role not in ROLES:
        raise OrgActionError(f"Unknown role {role!r}.")
    if not role_allows(actor_membership.role, "members.manage"):
        raise NotAllowed(f"Your role ({actor_membership.role}) cannot invite members.")
    if not may_touch_role(actor_membership.role, role):
        raise NotAllowed("Only an owner can invite another owner.")
    token = new_token()
    invitation = Invitation(
        organization_id=org.id,
        role=role,
        email=email.strip().lower() if email else None,
        token_hash=token_digest(token),
        created_by_id=actor.id,
        expires_at=utcnow() + ttl,
    )
    db.session.add(invitation)
    db.session.flush()
    audit.record(
        "member.invited",
        organization_id=org.id,
        actor=actor,
        target_type="invitation",
        target_id=invitation.id,
        details={"role": role, "email": invitation.email, "expires_at": invitation.expires_at.isoformat()},
        ip=ip,
    )
    if invitation.email:  # sent in the same transaction: the invitation exists iff its mail goes out
        mail.enqueue(
            invitation.email,
            "invitation",
            token=token,
            inviter=actor.display_name,
            org_name=org.name,
            role=role,
            expires_at=invitation.expires_at.strftime("%Y-%m-%d %H:%M UTC"),
        )
    db.session.commit()
    return IssuedInvitation(invitation, token)


def pending_invitations(org: Organization) -> list[Invitation]:
    return list(
        db.session.scalars(
            org_scoped(Invitation, org.id)
            .where(Invitation.accepted_at.is_(None), Invitation.revoked_at.is_(None), Invitation.expires_at > utcnow())
            .order_by(Invitation.created_at.desc())
        )
    )


def pending_invitations_from(org: Organization, user_id: object) -> list[Invitation]:
    """The pending invite links ``user_id`` made, which stop working when they leave or are removed."""
    return [i for i in pending_invitations(org) if i.created_by_id == user_id]


def revoke_invitation(
    org: Organization, invitation: Invitation, *, actor: User, actor_membership: Membership, ip: str | None = None
) -> None:
    if not role_allows(actor_membership.role, "members.manage"):
        raise NotAllowed(f"Your role ({actor_membership.role}) cannot manage invitations.")
    if not may_touch_role(actor_membership.role, invitation.role):
        raise NotAllowed("Only an owner can revoke an invitation for an owner.")
    if invite_state(invitation) is not InviteState.PENDING:
        raise OrgActionError("This invitation is no longer pending.")
    invitation.revoked_at = utcnow()
    audit.record(
        "invitation.revoked",
        organization_id=org.id,
        actor=actor,
        target_type="invitation",
        target_id=invitation.id,
        details={"role": invitation.role, "email": invitation.email},
        ip=ip,
    )
    db.session.commit()


def find_invitation(token: str, *, for_update: bool = False) -> Invitation | None:
    """The invitation behind a link, looked up by the token's digest (never by the token itself)."""
    query = sa.select(Invitation).where(Invitation.token_hash == token_digest(token))
    if for_update:
        # Re-read under the lock: a copy loaded earlier in this request must not hide a concurrent accept.
        query = query.with_for_update().execution_options(populate_existing=True)
    return db.session.scalar(query)


UNVERIFIED_INVITEE = "Verify your email address first: we sent you a link. Then come back to this page."


def invitation_blocker(invitation: Invitation, user: User) -> str | None:
    """Why ``user`` cannot accept this (pending) invitation, or ``None`` when they can."""
    if invitation.email and invitation.email != user.email.lower():
        return "This invitation is for a different email address. Sign in with that account to accept it."
    if membership_of(invitation.organization_id, user) is not None:
        return f"You are already a member of {invitation.organization.name}."
    if not user.is_verified and (invitation.email or needs_verified_email(invitation.role)):
        # An email-bound link proves nothing until the account proves the address; nor is an admin role given
        # to an address nobody has proved.
        return UNVERIFIED_INVITEE
    if not _inviter_still_may_grant(invitation):
        return "The person who sent this invitation can no longer grant this role. Ask for a new link."
    return None


def _inviter_still_may_grant(invitation: Invitation) -> bool:
    """The invitation is only as good as its inviter's current role in the organization."""
    if invitation.created_by_id is None:
        return False
    inviter_role = db.session.scalar(
        sa.select(Membership.role).where(
            Membership.organization_id == invitation.organization_id, Membership.user_id == invitation.created_by_id
        )
    )
    return inviter_may_grant(inviter_role, invitation.role)


def accept_invitation(token: str, user: User, *, ip: str | None = None) -> Membership:
    """Join the organization: the invitation is locked, checked again, and used up in one transaction."""
    invitation = find_invitation(token, for_update=True)
    if invitation is None or invite_state(invitation) is not InviteState.PENDING:
        db.session.rollback()
        raise OrgActionError("This invitation can no longer be used.")
    blocker = invitation_blocker(invitation, user)
    if blocker:
        db.session.rollback()
        raise OrgActionError(blocker)
    membership = Membership(user_id=user.id, organization_id=invitation.organization_id, role=invitation.role)
    db.session.add(membership)
    invitation.accepted_at = utcnow()
    invitation.accepted_by_id = user.id
    try:
        db.session.flush()
    except IntegrityError:  # joined through another invitation at the same moment
        db.session.rollback()
        raise OrgActionError(f"You are already a member of {invitation.organization.name}.") from None
    audit.record(
        "member.joined",
        organization_id=invitation.organization_id,
        actor=user,
        target_type="membership",
        target_id=membership.id,
        details={
            "email": user.email,
            "name": user.display_name,
            "role": invitation.role,
            "invitation_id": str(invitation.id),
        },
        ip=ip,
    )
    db.session.commit()
    return membership
