"""API keys: only a keyed hash and a display hint are stored, never the key itself."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, CIDR, JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column, relationship

from portal.extensions import Model
from portal.models._types import Timestamp, check_in, created_at, uuid_pk
from portal.models.organization import Organization
from portal.models.user import User

ENVIRONMENTS: tuple[str, ...] = ("test", "live")
# What a key is at a moment: ``ApiKey.status_at`` in Python and ``ApiKey.status_sql`` in SQL, side by side here.
KEY_STATUSES: tuple[str, ...] = ("active", "expiring", "expired", "revoked")


class CidrList(sa.TypeDecorator[list[str]]):
    """A PostgreSQL ``cidr[]`` read and written as a list of strings (psycopg2 has no caster for ``cidr[]``)."""

    impl = ARRAY(CIDR)
    cache_ok = True

    def column_expression(self, column: Any) -> Any:
        return sa.cast(column, ARRAY(sa.Text))

    def bind_expression(self, bindvalue: Any) -> Any:
        return sa.cast(bindvalue, ARRAY(CIDR))


class ApiKey(Model):
    __tablename__ = "api_keys"
    __table_args__ = (
        check_in("environment", ENVIRONMENTS, "ck_api_keys_environment"),
        # The key list (portal/keys/listing.py, migration 0012): its sort orders, creator filter and search.
        sa.Index("ix_api_keys_org_created", "organization_id", sa.text("created_at DESC"), sa.text("id DESC")),
        sa.Index("ix_api_keys_org_creator", "organization_id", "created_by_id"),
        *(
            sa.Index(
                f"ix_api_keys_{column}_trgm", column, postgresql_using="gin", postgresql_ops={column: "gin_trgm_ops"}
            )
            for column in ("name", "hint", "external_id")
        ),
        # Keys still able to authenticate, for counting against the plan's key limit.
        sa.Index("ix_api_keys_org_unrevoked", "organization_id", postgresql_where=sa.text("revoked_at IS NULL")),
        # Keys whose expiry is near or just passed, for the scheduler's key.expiring and key.expired.
        sa.Index("ix_api_keys_expires_at", "expires_at", postgresql_where=sa.text("expires_at IS NOT NULL")),
        sa.UniqueConstraint("organization_id", "external_id", name="uq_api_keys_org_external_id"),
        sa.CheckConstraint("rate_limit > 0", name="ck_api_keys_rate_limit"),
        sa.CheckConstraint("jsonb_typeof(meta) = 'object'", name="ck_api_keys_meta_object"),
        # Room on each page for a row's next version: the usage writer's last_used_at touch stays a HOT update
        # that writes no index entry (migration 0020 has the measurement).
        {"postgresql_with": {"fillfactor": 80}},
    )

    id: Mapped[uuid_pk]
    organization_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), sa.ForeignKey("organizations.id", ondelete="CASCADE")
    )
    name: Mapped[str] = mapped_column(sa.String(100))
    environment: Mapped[str] = mapped_column(sa.String(4))
    hint: Mapped[str] = mapped_column(sa.String(40))
    key_hash: Mapped[bytes] = mapped_column(sa.LargeBinary(32), unique=True)
    created_by_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), sa.ForeignKey("users.id", ondelete="SET NULL")
    )
    created_at: Mapped[created_at]
    expires_at: Mapped[datetime | None] = mapped_column(Timestamp)
    revoked_at: Mapped[datetime | None] = mapped_column(Timestamp)
    revoked_by_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), sa.ForeignKey("users.id", ondelete="SET NULL")
    )
    last_used_at: Mapped[datetime | None] = mapped_column(Timestamp)
    replaced_by_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), sa.ForeignKey("api_keys.id", ondelete="SET NULL")
    )
    # The portal's own bookkeeping (resubmission token, rolled-from id); never shown to API callers.
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, server_default=sa.text("'{}'::jsonb"))
    # Policy the verification enforces: NULL scopes = full access; an empty allowlist = any address; NULL
    # rate_limit = only the organization's limit.
    scopes: Mapped[list[str] | None] = mapped_column(ARRAY(sa.Text))
    allowed_ips: Mapped[list[str]] = mapped_column(CidrList, server_default=sa.text("'{}'::cidr[]"))
    rate_limit: Mapped[int | None] = mapped_column(sa.Integer)
    # The customer's own: returned as ``meta`` and ``external_id`` by every valid verification.
    meta: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=sa.text("'{}'::jsonb"))
    external_id: Mapped[str | None] = mapped_column(sa.String(128))

    organization: Mapped[Organization] = relationship()
    created_by: Mapped[User | None] = relationship(foreign_keys=[created_by_id])
    revoked_by: Mapped[User | None] = relationship(foreign_keys=[revoked_by_id])

    def status_at(self, now: datetime) -> str:
        """``active``, ``expiring`` (rolled or due to expire, still working), ``expired`` or ``revoked``."""
        if self.revoked_at is not None and self.revoked_at <= now:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        if self.replaced_by_id is not None or self.revoked_at is not None:
            return "expiring"
        return "active"

    # "Active keys", the number the plan's max_keys caps, everywhere it is shown or checked: keys that can
    # authenticate now. A rolled key in its grace period (status ``expiring``) counts until it stops working.
    COUNTED_STATUSES: tuple[str, ...] = ("active", "expiring")

    @classmethod
    def counts_toward_limit(cls, moment: datetime) -> sa.ColumnElement[bool]:
        """Whether a key is one of the organization's active keys at ``moment`` (:data:`COUNTED_STATUSES`)."""
        return cls.status_sql(moment).in_(cls.COUNTED_STATUSES)

    @classmethod
    def status_sql(cls, moment: datetime) -> sa.ColumnElement[str]:
        """:meth:`status_at` as SQL, evaluated at ``moment`` (a parameter, so it matches the Python clock)."""
        at = sa.literal(moment, sa.DateTime(timezone=True))
        return sa.case(
            (sa.and_(cls.revoked_at.is_not(None), cls.revoked_at <= at), "revoked"),
            (sa.and_(cls.expires_at.is_not(None), cls.expires_at <= at), "expired"),
            (sa.or_(cls.replaced_by_id.is_not(None), cls.revoked_at.is_not(None)), "expiring"),
            else_="active",
        )
