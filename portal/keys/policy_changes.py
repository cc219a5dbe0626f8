"""Changing a made key's policy (scopes, addresses, its own limit) and details (metadata, external id), checked
as on creation and audited, so the very next verification enforces and returns the new values."""

from __future__ import annotations

from typing import Any

from portal import audit
from portal.extensions import db
from portal.keys.policy import KeyPolicy
from portal.keys.services import KeyActionError, _checked, _policy_details
from portal.models import ApiKey, Organization, User
from portal.timeutil import utcnow


def set_policy(
    org: Organization,
    api_key: ApiKey,
    actor: User | None,
    *,
    scopes: list[str] | None,
    allowed_ips: list[str] | str | None,
    rate_limit: int | None,
    ip: str | None = None,
) -> None:
    """Change what the key may do; the very next verification enforces it."""
    if api_key.revoked_at is not None and api_key.revoked_at <= utcnow():
        raise KeyActionError("A revoked key cannot be changed.")
    checked = _checked(org, api_key.id, KeyPolicy(scopes=scopes, allowed_ips=allowed_ips, rate_limit=rate_limit))
    before = _policy_details(api_key)
    api_key.scopes, api_key.rate_limit = checked.scopes, checked.rate_limit
    api_key.allowed_ips = list(checked.allowed_ips or [])
    after = _policy_details(api_key)
    audit.record(
        "key.policy_changed",
        organization_id=org.id,
        actor=actor,
        target_type="api_key",
        target_id=api_key.id,
        details={"hint": api_key.hint, **{k: v for k, v in after.items() if before[k] != v}},
        ip=ip,
    )
    db.session.commit()


def set_details(
    org: Organization,
    api_key: ApiKey,
    actor: User | None,
    *,
    meta: dict[str, Any] | str | None,
    external_id: str | None,
    ip: str | None = None,
) -> None:
    """Change the metadata and external id that valid verifications return."""
    checked = _checked(org, api_key.id, KeyPolicy(meta=meta, external_id=external_id))
    changed = []
    if checked.meta != api_key.meta:
        changed.append("metadata")
    if checked.external_id != api_key.external_id:
        changed.append("external id")
    api_key.meta = dict(checked.meta or {})  # type: ignore[arg-type]
    api_key.external_id = checked.external_id
    audit.record(
        "key.details_changed",
        organization_id=org.id,
        actor=actor,
        target_type="api_key",
        target_id=api_key.id,
        details={"hint": api_key.hint, "changed": ", ".join(changed) or "nothing", "external_id": checked.external_id},
        ip=ip,
    )
    db.session.commit()
