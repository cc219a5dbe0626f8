"""Organizations, who belongs to them, and pending invitations."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Mapped, mapped_column, relationship

from portal.extensions import Model
from portal.models._types import Timestamp, check_in, created_at, uuid_pk
from portal.plans import PLAN_NAMES, PLANS, Plan
from portal.roles import ROLES

if TYPE_CHECKING:
    from portal.models.user import User

# What happens when a secret scanner reports one of the organization's keys in public: tell the owners, or
# revoke the key at once and tell them (portal/keys/leaks.py).
LEAK_ACTIONS: tuple[str, ...] = ("notify", "revoke")


class Organization(Model):
    __tablename__ = "organizations"
    __table_args__ = (
        check_in("plan", PLAN_NAMES, "ck_organizations_plan"),
        check_in("leak_action", LEAK_ACTIONS, "ck_organizations_leak_action"),
    )

    id: Mapped[uuid_pk]
    name: Mapped[str] = mapped_column(sa.String(100))
    slug: Mapped[str] = mapped_column(sa.String(60), unique=True)
    plan: Mapped[str] = mapped_column(sa.String(20), server_default="free")
    # Set by an owner: members without two-factor see only the enrolment page for this organization.
    require_two_factor: Mapped[bool] = mapped_column(server_default=sa.false())
    leak_action: Mapped[str] = mapped_column(sa.String(10), server_default="notify")
    # Extra calls granted by staff for one UTC month (its first day), on top of the plan's monthly quota.
    quota_extension: Mapped[int] = mapped_column(server_default="0")
    quota_extension_month: Mapped[date | None] = mapped_column(sa.Date)
    # key.idle fires for a key with no calls for this many days (portal/notify/scheduler.py); None: off.
    idle_key_days: Mapped[int | None] = mapped_column(sa.SmallInteger)
    created_at: Mapped[created_at]
    # Set when an owner deleted it (portal/orgs/lifecycle.py): the row stays for staff and the audit trail.
    deleted_at: Mapped[datetime | None] = mapped_column(Timestamp)

    memberships: Mapped[list[Membership]] = relationship(
        back_populates="organization", cascade="all, delete-orphan", passive_deletes=True
    )

    @property
    def is_deleted(self) -> bool:
        return self.deleted_at is not None

    @property
    def plan_info(self) -> Plan:
        return PLANS[self.plan]

    def quota_for(self, month: date) -> int:
        """The monthly quota for the UTC month starting on ``month``: the plan's plus any extension."""
        extra = self.quota_extension if self.quota_extension_month == month else 0
        return self.plan_info.monthly_quota + extra

    @classmethod
    def quota_sql(cls, month: date) -> sa.ColumnElement[int]:
        """:meth:`quota_for` as SQL, for queries over many organizations at once."""
        plan_quota = sa.case({p.name: p.monthly_quota for p in PLANS.values()}, value=cls.plan, else_=0)
        extra = sa.case((cls.quota_extension_month == month, cls.quota_extension), else_=0)
        # bigint: Enterprise's 100M calls times a threshold percentage is past an integer's range.
        return sa.cast(plan_quota + extra, sa.BigInteger)


class Membership(Model):
    __tablename__ = "memberships"
    __table_args__ = (
        sa.UniqueConstraint("user_id", "organization_id", name="uq_memberships_user_org"),
        check_in("role", ROLES, "ck_memberships_role"),
        sa.Index("ix_memberships_organization_id", "organization_id"),
    )

    id: Mapped[uuid_pk]
    user_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), sa.ForeignKey("users.id", ondelete="CASCADE"))
    organization_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), sa.ForeignKey("organizations.id", ondelete="CASCADE")
    )
    role: Mapped[str] = mapped_column(sa.String(20))
    created_at: Mapped[created_at]
    # The newest organization event this member has seen on the events page; the bell counts those after it.
    events_seen_at: Mapped[datetime | None] = mapped_column(Timestamp)

    user: Mapped[User] = relationship(back_populates="memberships")
    organization: Mapped[Organization] = relationship(back_populates="memberships")


class Invitation(Model):
    """An invite link: only the SHA-256 of its token is stored, the link itself is shown once."""

    __tablename__ = "invitations"
    __table_args__ = (
        check_in("role", ROLES, "ck_invitations_role"),
        sa.Index("ix_invitations_organization_id", "organization_id"),
    )

    id: Mapped[uuid_pk]
    organization_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), sa.ForeignKey("organizations.id", ondelete="CASCADE")
    )
    role: Mapped[str] = mapped_column(sa.String(20))
    email: Mapped[str | None] = mapped_column(sa.String(254))
    token_hash: Mapped[bytes] = mapped_column(sa.LargeBinary(32), unique=True)
    created_by_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), sa.ForeignKey("users.id", ondelete="SET NULL")
    )
    created_at: Mapped[created_at]
    expires_at: Mapped[datetime] = mapped_column(Timestamp)
    accepted_at: Mapped[datetime | None] = mapped_column(Timestamp)
    accepted_by_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), sa.ForeignKey("users.id", ondelete="SET NULL")
    )
    revoked_at: Mapped[datetime | None] = mapped_column(Timestamp)

    organization: Mapped[Organization] = relationship()
