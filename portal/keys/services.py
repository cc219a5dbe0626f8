"""Key lifecycle: create, list, rename, set expiry, roll, revoke. Shared by the portal, the CLI and the staff area.

Revoking a selection of keys is in :mod:`portal.keys.selection`; changing a key's policy or details later, in
:mod:`portal.keys.policy_changes`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from flask import current_app
from sqlalchemy.orm import selectinload

from portal import audit
from portal import scopes as scope_catalogue
from portal.db import count_rows, org_scoped
from portal.extensions import db
from portal.keys import format as keyformat
from portal.keys import listing, policy
from portal.keys.policy import KeyPolicy
from portal.models import ApiKey, Membership, Organization, User
from portal.pagination import Page, paginate
from portal.timeutil import utcnow

# How long a rolled key keeps working, by the name the roll form sends: (label, period).
ROLL_GRACE_PERIODS: dict[str, tuple[str, timedelta]] = {
    "now": ("No time: stop it now", timedelta(0)),
    "1h": ("1 hour", timedelta(hours=1)),
    "24h": ("24 hours", timedelta(hours=24)),
    "7d": ("7 days", timedelta(days=7)),
}


UNVERIFIED_LIVE = (
    "Verify your email address before creating live keys: follow the link we mailed you, "
    "or send a new one from the banner above."
)


class KeyActionError(Exception):
    """A key operation that cannot be done; the message is shown to the user."""


class AlreadyCreated(Exception):
    """The create form was submitted again; its first key exists and its secret is not shown again."""

    def __init__(self, api_key: ApiKey) -> None:
        super().__init__("This key was already created. Its secret is shown only once.")
        self.api_key = api_key


def lock_organization(org: Organization) -> None:
    """Serialize key changes per organization, so plan limits and resubmission checks hold under races."""
    db.session.execute(sa.select(Organization.id).where(Organization.id == org.id).with_for_update())


def _lock_live_organization(org: Organization) -> None:
    """:func:`lock_organization`, then refuse if the organization was deleted meanwhile: a key created by a
    request that waited on the lock while the deletion committed would otherwise still verify."""
    lock_organization(org)
    deleted_at = db.session.scalar(sa.select(Organization.deleted_at).where(Organization.id == org.id))
    if deleted_at is not None:
        db.session.rollback()
        raise KeyActionError("This organization was deleted; its keys can no longer be created or rolled.")


def _checked(org: Organization, api_key_id: uuid.UUID | None, given: KeyPolicy) -> KeyPolicy:
    """The policy as stored, or KeyActionError with the first problem (unknown scope, bad CIDR, limit above
    the plan's, metadata too big, external id taken)."""
    try:
        checked = KeyPolicy(
            scopes=scope_catalogue.normalize(given.scopes),
            allowed_ips=policy.parse_cidrs(given.allowed_ips),
            rate_limit=policy.check_rate_limit(given.rate_limit, org.plan_info.requests_per_minute),
            meta=policy.parse_meta(given.meta),
            external_id=policy.parse_external_id(given.external_id),
        )
    except ValueError as exc:
        raise KeyActionError(str(exc)) from None
    if checked.external_id is not None:
        taken = org_scoped(ApiKey, org.id).where(ApiKey.external_id == checked.external_id)
        if api_key_id is not None:
            taken = taken.where(ApiKey.id != api_key_id)
        if db.session.scalar(taken) is not None:
            raise KeyActionError(f"Another key of {org.name} already has the external id “{checked.external_id}”.")
    return checked


def _policy_details(api_key: ApiKey) -> dict[str, Any]:
    return {
        "scopes": " ".join(api_key.scopes) if api_key.scopes else "full access",
        "allowed_ips": ", ".join(api_key.allowed_ips) if api_key.allowed_ips else "any address",
        "rate_limit": api_key.rate_limit if api_key.rate_limit is not None else "organization's limit",
    }


@dataclass(frozen=True)
class IssuedKey:
    """A freshly made key: the row, and the plaintext that exists only until this response is sent."""

    api_key: ApiKey
    plaintext: str


def pepper() -> str:
    return str(current_app.config["API_KEY_PEPPER"])


@dataclass(frozen=True)
class KeyAllowance:
    """The organization's active keys against its plan's limit, and how many of them are rolled keys in grace."""

    active: int
    in_grace: int
    limit: int

    @property
    def at_limit(self) -> bool:
        return self.active >= self.limit


def key_allowance(org: Organization) -> KeyAllowance:
    """What the keys page says and the plan check enforces, in one query."""
    status = ApiKey.status_sql(utcnow())
    active, in_grace = db.session.execute(
        sa.select(
            sa.func.count().filter(status.in_(ApiKey.COUNTED_STATUSES)),
            sa.func.count().filter(status == "expiring"),
        ).where(ApiKey.organization_id == org.id)
    ).one()
    return KeyAllowance(int(active), int(in_grace), org.plan_info.max_keys)


def usable_key_count(organization_id: uuid.UUID) -> int:
    """The organization's active keys (:meth:`ApiKey.counts_toward_limit`); the plan's ``max_keys`` caps this
    number for new keys.

    Rolling is always allowed (replacing a leaked key must never be blocked), so a roll at the limit can take
    the count past it until the old key's grace period ends."""
    query = (
        sa.select(sa.func.count())
        .select_from(ApiKey)
        .where(ApiKey.organization_id == organization_id, ApiKey.counts_toward_limit(utcnow()))
    )
    return int(db.session.scalar(query) or 0)


def _issue(
    org: Organization,
    name: str,
    environment: str,
    actor: User | None,
    expires_at: datetime | None,
    metadata: dict[str, object] | None,
    key_policy: KeyPolicy | None = None,
) -> IssuedKey:
    key_policy = key_policy or KeyPolicy()
    plaintext = keyformat.generate(environment)
    api_key = ApiKey(
        organization_id=org.id,
        name=name,
        environment=environment,
        hint=keyformat.hint(plaintext),
        key_hash=keyformat.key_hash(plaintext, pepper()),
        created_by_id=actor.id if actor else None,
        expires_at=expires_at,
        metadata_=metadata or {},
        scopes=key_policy.scopes,
        allowed_ips=list(key_policy.allowed_ips or []),
        rate_limit=key_policy.rate_limit,
        meta=dict(key_policy.meta or {}),  # type: ignore[arg-type]
        external_id=key_policy.external_id,
    )
    db.session.add(api_key)
    db.session.flush()
    return IssuedKey(api_key, plaintext)


def create_key(
    org: Organization,
    *,
    name: str,
    environment: str,
    actor: User | None,
    expires_at: datetime | None = None,
    request_token: str | None = None,
    actor_label: str | None = None,
    ip: str | None = None,
    key_policy: KeyPolicy | None = None,
) -> IssuedKey:
    """Make a key. ``request_token`` makes a resubmitted form find its first key instead of a second;
    ``key_policy`` restricts it (scopes, addresses, its own limit) and labels it (metadata, external id)."""
    if environment not in keyformat.PREFIXES:
        raise KeyActionError(f"Unknown environment {environment!r}.")
    if expires_at is not None and expires_at <= utcnow():
        raise KeyActionError("The expiry date must be in the future.")
    if environment == "live" and actor is not None and not actor.is_verified:
        raise KeyActionError(UNVERIFIED_LIVE)
    _lock_live_organization(org)
    if request_token and (existing := find_by_request_token(org, request_token)) is not None:
        db.session.rollback()
        raise AlreadyCreated(existing)
    limit = org.plan_info.max_keys
    if usable_key_count(org.id) >= limit:
        db.session.rollback()
        raise KeyActionError(f"The {org.plan_info.label} plan allows {limit} active keys. Revoke one or upgrade.")
    try:
        checked = _checked(org, None, key_policy or KeyPolicy())
    except KeyActionError:
        db.session.rollback()
        raise
    metadata: dict[str, object] | None = {"request_token": request_token} if request_token else None
    issued = _issue(org, name, environment, actor, expires_at, metadata, checked)
    audit.record(
        "key.created",
        organization_id=org.id,
        actor=actor,
        actor_label=actor_label,
        target_type="api_key",
        target_id=issued.api_key.id,
        details={
            "name": name,
            "environment": environment,
            "hint": issued.api_key.hint,
            **_policy_details(issued.api_key),
        },
        ip=ip,
    )
    db.session.commit()
    return issued


def find_by_request_token(org: Organization, request_token: str) -> ApiKey | None:
    return db.session.scalar(
        org_scoped(ApiKey, org.id).where(ApiKey.metadata_["request_token"].astext == request_token)
    )


def list_keys(
    org: Organization, filters: listing.KeyFilters | None = None, *, page: int = 1, per_page: int = 20
) -> Page[ApiKey]:
    """One page of the organization's keys narrowed by ``filters`` (search, environment, status, creator,
    scope) in their sort order; ``total`` is how many keys match."""
    filters = filters or listing.KeyFilters()
    query = org_scoped(ApiKey, org.id).where(*listing.conditions(filters, utcnow()))
    order = listing.ordering(filters.sort)

    def fetch(limit: int, offset: int) -> list[ApiKey]:
        # The page's ids first (narrow rows, an index-only scan in created order), then only those rows: a deep
        # OFFSET then skips index entries, not whole rows sorted on disk (docs/performance.md).
        ids = query.with_only_columns(ApiKey.id).order_by(*order).limit(limit).offset(offset)
        page = org_scoped(ApiKey, org.id).where(ApiKey.id.in_(ids.scalar_subquery()))
        return list(db.session.scalars(page.options(selectinload(ApiKey.created_by)).order_by(*order)))

    return paginate(
        fetch,
        page=page,
        per_page=per_page,
        total=count_rows(query),
    )


def key_creators(org: Organization) -> list[User]:
    """Members of ``org`` who created at least one of its keys: the choices of the list's creator filter."""
    created = org_scoped(ApiKey, org.id).where(ApiKey.created_by_id == User.id).exists()
    return list(
        db.session.scalars(
            sa.select(User)
            .join(Membership, Membership.user_id == User.id)
            .where(Membership.organization_id == org.id, created)
            .order_by(sa.func.lower(User.display_name), User.id)
        )
    )


def rename_key(org: Organization, api_key: ApiKey, name: str, actor: User | None, *, ip: str | None = None) -> None:
    old = api_key.name
    api_key.name = name
    audit.record(
        "key.renamed",
        organization_id=org.id,
        actor=actor,
        target_type="api_key",
        target_id=api_key.id,
        details={"from": old, "to": name, "hint": api_key.hint},
        ip=ip,
    )
    db.session.commit()


def set_expiry(
    org: Organization, api_key: ApiKey, expires_at: datetime | None, actor: User | None, *, ip: str | None = None
) -> None:
    if api_key.revoked_at is not None:
        raise KeyActionError("A revoked key cannot be changed.")
    if expires_at is not None and expires_at <= utcnow():
        raise KeyActionError("The expiry date must be in the future.")
    api_key.expires_at = expires_at
    audit.record(
        "key.expiry_changed",
        organization_id=org.id,
        actor=actor,
        target_type="api_key",
        target_id=api_key.id,
        details={"expires_at": expires_at.isoformat() if expires_at else None, "hint": api_key.hint},
        ip=ip,
    )
    db.session.commit()


def revoke_key(
    org: Organization, api_key: ApiKey, actor: User | None, actor_label: str | None = None, *, ip: str | None = None
) -> None:
    """Revoke now; the very next verification of this key fails."""
    moment = utcnow()
    if api_key.revoked_at is not None and api_key.revoked_at <= moment:
        raise KeyActionError("This key is already revoked.")
    _revoke(org, api_key, actor, moment, actor_label=actor_label, ip=ip)
    db.session.commit()


def _revoke(
    org: Organization,
    api_key: ApiKey,
    actor: User | None,
    moment: datetime,
    *,
    actor_label: str | None = None,
    ip: str | None = None,
) -> None:
    """Mark ``api_key`` revoked at ``moment`` and add its ``key.revoked`` event; the caller commits."""
    api_key.revoked_at = moment
    api_key.revoked_by_id = actor.id if actor else None
    audit.record(
        "key.revoked",
        organization_id=org.id,
        actor=actor,
        actor_label=actor_label,
        target_type="api_key",
        target_id=api_key.id,
        details={"name": api_key.name, "hint": api_key.hint},
        ip=ip,
    )


def roll_key(
    org: Organization, api_key: ApiKey, grace: timedelta, actor: User | None, *, ip: str | None = None
) -> IssuedKey:
    """A new key with the same name; the old one keeps working for ``grace``, then stops."""
    _lock_live_organization(org)
    db.session.refresh(api_key)  # another roll or revoke may have committed while we waited for the lock
    moment = utcnow()
    if api_key.status_at(moment) != "active":
        db.session.rollback()
        raise KeyActionError("Only an active key can be rolled.")
    # The new key carries the old one's policy (a roll must not widen what a key may do) and takes over its
    # external id: the customer's reference follows the key in use, and ids are unique per organization.
    external_id, api_key.external_id = api_key.external_id, None
    db.session.flush()
    inherited = KeyPolicy(
        scopes=list(api_key.scopes) if api_key.scopes is not None else None,
        allowed_ips=list(api_key.allowed_ips or []),
        rate_limit=api_key.rate_limit,
        meta=dict(api_key.meta or {}),
        external_id=external_id,
    )
    issued = _issue(
        org, api_key.name, api_key.environment, actor, api_key.expires_at, {"rolled_from": str(api_key.id)}, inherited
    )
    api_key.replaced_by_id = issued.api_key.id
    api_key.revoked_at = moment + grace
    api_key.revoked_by_id = actor.id if actor else None
    audit.record(
        "key.rolled",
        organization_id=org.id,
        actor=actor,
        target_type="api_key",
        target_id=api_key.id,
        details={
            "name": api_key.name,
            "old_hint": api_key.hint,
            "new_hint": issued.api_key.hint,
            "new_key_id": str(issued.api_key.id),
            "old_key_stops_at": api_key.revoked_at.isoformat(),
        },
        ip=ip,
    )
    db.session.commit()
    return issued
