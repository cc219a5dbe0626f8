"""Organization-level changes: plans, settings, members and roles.

Shared by the views, the CLI and the staff area, so behaviour never forks. Invitations are in
:mod:`portal.orgs.invitations`, the audit trail's queries in :mod:`portal.orgs.audit_queries`.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import joinedload
from sqlalchemy.orm.exc import ObjectDeletedError

from portal import audit
from portal.db import org_scoped
from portal.extensions import db
from portal.models import Invitation, Membership, Organization, User
from portal.plans import PLANS
from portal.roles import OWNER, ROLES, is_last_owner, may_touch_role, needs_verified_email, role_allows
from portal.timeutil import utcnow

SUPPORT_LABEL = "ProCode support"


class OrgActionError(Exception):
    """An organization change that cannot be done; the message is shown to the user.

    ``status`` is the HTTP status a view answers with: 409 for a state that forbids the change (the last
    owner), 403 for a change the actor's role does not allow.
    """

    status = 409


class NotAllowed(OrgActionError):
    status = 403


def change_plan(
    org: Organization,
    plan: str,
    *,
    reason: str,
    actor: User | None,
    actor_label: str | None = None,
    ip: str | None = None,
) -> None:
    if plan not in PLANS:
        raise OrgActionError(f"Unknown plan {plan!r}.")
    if org.deleted_at is not None:
        raise OrgActionError(f"{org.name} was deleted; its plan no longer changes.")
    old = org.plan
    org.plan = plan
    audit.record(
        "plan.changed",
        organization_id=org.id,
        actor=actor,
        actor_label=actor_label,
        target_type="organization",
        target_id=org.id,
        details={"from": old, "to": plan, "reason": reason.strip()},
        ip=ip,
    )
    db.session.commit()


def slugify(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    return slug[:40] or "org"


def unique_slug(base: str) -> str:
    """``base`` as a slug, numbered ``-2``, ``-3`` … when taken (deleted organizations keep theirs), so
    organizations with the same name stay distinguishable in the switcher and in addresses."""
    slug = slugify(base)
    taken = set(
        db.session.scalars(
            sa.select(Organization.slug).where(sa.or_(Organization.slug == slug, Organization.slug.like(f"{slug}-%")))
        )
    )
    n = 1
    candidate = slug
    while candidate in taken:
        n += 1
        candidate = f"{slug}-{n}"
    return candidate


SLUG_ATTEMPTS = 5


def create_organization(
    name: str, owner: User, *, plan: str = "free", slug: str | None = None, ip: str | None = None
) -> Organization:
    """An organization owned by ``owner``, added to the session uncommitted so a sign-up commits both at once.

    Two organizations named alike at the same moment may pick the same slug; the unique index decides, and the
    loser takes the next number."""
    for attempt in range(SLUG_ATTEMPTS):
        org = Organization(name=name.strip(), slug=slug or unique_slug(name), plan=plan)
        try:
            with db.session.begin_nested():
                db.session.add(org)
                db.session.flush()
            break
        except IntegrityError:
            if slug is not None or attempt == SLUG_ATTEMPTS - 1:
                raise
    db.session.add(Membership(user_id=owner.id, organization_id=org.id, role=OWNER))
    audit.record(
        "org.created", organization_id=org.id, actor=owner, target_type="organization", target_id=org.id, ip=ip
    )
    return org


def find_org(slug: str) -> Organization | None:
    """The one lookup of an organization by its slug; deleted organizations included (staff see them)."""
    return db.session.scalar(sa.select(Organization).where(Organization.slug == slug))


def create_org(name: str, owner: User, *, ip: str | None = None) -> Organization:
    """Another organization for a signed-in user, who becomes its owner (free plan)."""
    org = create_organization(name, owner, ip=ip)
    db.session.commit()
    return org


def rename_org(org: Organization, name: str, actor: User, *, ip: str | None = None) -> None:
    old = org.name
    if name == old:
        return
    org.name = name
    audit.record(
        "org.renamed",
        organization_id=org.id,
        actor=actor,
        target_type="organization",
        target_id=org.id,
        details={"from": old, "to": name},
        ip=ip,
    )
    db.session.commit()


# Members ---------------------------------------------------------------------------------------------------


def list_members(org: Organization) -> list[Membership]:
    """Members with their accounts, owners first, then by name."""
    rank = sa.case({role: i for i, role in enumerate(ROLES)}, value=Membership.role)
    return list(
        db.session.scalars(
            org_scoped(Membership, org.id)
            .join(Membership.user)
            .options(joinedload(Membership.user))
            .order_by(rank, sa.func.lower(User.display_name), User.email)
        )
    )


@contextmanager
def _membership_change(org: Organization, actor_membership: Membership, target: Membership) -> Iterator[None]:
    """Lock the organization, re-read both memberships, and roll back if the change is refused.

    The lock serializes membership changes per organization, so two owners demoting each other at once cannot
    both pass the last-owner check; re-reading under the lock means the checks see committed roles.
    """
    db.session.execute(sa.select(Organization.id).where(Organization.id == org.id).with_for_update())
    try:
        try:
            db.session.refresh(actor_membership)
            db.session.refresh(target)
        except ObjectDeletedError:
            raise OrgActionError("That membership no longer exists. Reload the page.") from None
        yield
    except OrgActionError:
        db.session.rollback()
        raise


def owner_count(org: Organization) -> int:
    """How many owners ``org`` has (it always keeps at least one)."""
    return _owner_count(org)


def _owner_count(org: Organization) -> int:
    query = (
        sa.select(sa.func.count())
        .select_from(Membership)
        .where(Membership.organization_id == org.id, Membership.role == OWNER)
    )
    return int(db.session.scalar(query) or 0)


def _check_may_manage(actor_membership: Membership, target: Membership, new_role: str | None = None) -> None:
    leaving = new_role is None and actor_membership.id == target.id
    if not leaving and not role_allows(actor_membership.role, "members.manage"):
        raise NotAllowed(f"Your role ({actor_membership.role}) cannot manage members.")
    roles_touched = (target.role, new_role or target.role)
    if not all(may_touch_role(actor_membership.role, role) for role in roles_touched):
        raise NotAllowed("Only an owner can grant, change or remove the owner role.")


def inviter_may_grant(inviter_role: str | None, role: str) -> bool:
    """Whether a member holding ``inviter_role`` (None: no longer a member) may still hand out ``role``."""
    return (
        inviter_role is not None and role_allows(inviter_role, "members.manage") and may_touch_role(inviter_role, role)
    )


def _revoke_invitations_from(
    org: Organization, target: Membership, actor: User, ip: str | None, *, new_role: str | None = None
) -> None:
    """Links a member made stop working when they can no longer grant them: all of them when they leave or
    lose the right to invite, the owner invitations when an owner becomes an admin (``new_role``)."""
    pending = db.session.scalars(
        org_scoped(Invitation, org.id).where(
            Invitation.created_by_id == target.user_id,
            Invitation.accepted_at.is_(None),
            Invitation.revoked_at.is_(None),
        )
    ).all()
    for invitation in pending:
        if new_role is not None and inviter_may_grant(new_role, invitation.role):
            continue
        invitation.revoked_at = utcnow()
        audit.record(
            "invitation.revoked",
            organization_id=org.id,
            actor=actor,
            target_type="invitation",
            target_id=invitation.id,
            details={"role": invitation.role, "reason": "inviter lost access"},
            ip=ip,
        )


def member_details(target: Membership) -> dict[str, str]:
    """What an audit event about a membership keeps: who it was, readable (and findable by the account's
    departure page) after the membership is gone."""
    return {"email": target.user.email, "name": target.user.display_name, "user_id": str(target.user_id)}


def change_role(
    org: Organization,
    target: Membership,
    new_role: str,
    *,
    actor: User,
    actor_membership: Membership,
    ip: str | None = None,
) -> None:
    """Give ``target`` another role, within the guard rails: owners stay, admins do not touch owners."""
    if new_role not in ROLES:
        raise OrgActionError(f"Unknown role {new_role!r}.")
    with _membership_change(org, actor_membership, target):
        _check_may_manage(actor_membership, target, new_role)
        if new_role == target.role:
            db.session.commit()  # nothing to change; release the lock
            return
        if is_last_owner(target.role, _owner_count(org)):
            raise OrgActionError("The last owner cannot be demoted. Make someone else an owner first.")
        if needs_verified_email(new_role) and not target.user.is_verified:
            raise OrgActionError(
                f"{target.user.display_name} has not verified their email address yet. "
                f"They can be made {new_role} once they have."
            )
        old = target.role
        target.role = new_role
        _revoke_invitations_from(org, target, actor, ip, new_role=new_role)
        audit.record(
            "member.role_changed",
            organization_id=org.id,
            actor=actor,
            target_type="membership",
            target_id=target.id,
            details={**member_details(target), "from": old, "to": new_role},
            ip=ip,
        )
        db.session.commit()


def remove_member(
    org: Organization, target: Membership, *, actor: User, actor_membership: Membership, ip: str | None = None
) -> None:
    """Take ``target`` out of the organization; the last owner cannot be removed."""
    with _membership_change(org, actor_membership, target):
        _check_may_manage(actor_membership, target)
        if is_last_owner(target.role, _owner_count(org)):
            raise OrgActionError("The last owner cannot be removed. Make someone else an owner first.")
        audit.record(
            "member.removed",
            organization_id=org.id,
            actor=actor,
            target_type="membership",
            target_id=target.id,
            details={**member_details(target), "role": target.role},
            ip=ip,
        )
        _revoke_invitations_from(org, target, actor, ip)
        db.session.delete(target)
        db.session.commit()


def membership_of(org_id: object, user: User) -> Membership | None:
    return db.session.scalar(
        sa.select(Membership).where(Membership.organization_id == org_id, Membership.user_id == user.id)
    )
