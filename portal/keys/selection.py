"""Revoking the keys ticked on the list: sorted first into what will be revoked and what is left out, then
revoked in one transaction with the rows locked, so the confirmation page and the change agree."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from portal.db import org_scoped
from portal.extensions import db
from portal.keys.services import KeyActionError, _revoke
from portal.models import ApiKey, Organization, User
from portal.pagination import MAX_PER_PAGE
from portal.roles import key_permission, role_allows
from portal.timeutil import utcnow

# A selection comes from one page of the list, which shows at most this many keys.
MAX_SELECTION = MAX_PER_PAGE


@dataclass(frozen=True)
class Selection:
    """Keys picked on the list for revocation, sorted into those that will be revoked and those left out."""

    revocable: list[ApiKey]
    not_working: list[ApiKey]  # already revoked or expired: nothing to revoke
    not_permitted: list[ApiKey]  # live keys, for a role that manages test keys only
    missing: int  # ids that are not keys of this organization (malformed, deleted, another organization's)

    @property
    def left_out(self) -> int:
        return len(self.not_working) + len(self.not_permitted) + self.missing


def selected_ids(values: list[str]) -> tuple[list[uuid.UUID], int]:
    """The well-formed key ids among ``values`` (order kept, duplicates dropped), and how many were not."""
    if len(values) > 2 * MAX_SELECTION:  # checked before any work, whatever a hand-made form sends
        raise KeyActionError(f"Select at most {MAX_SELECTION} keys at a time.")
    ids: dict[uuid.UUID, None] = {}
    malformed = 0
    for value in values:
        try:
            ids[uuid.UUID(value)] = None
        except (ValueError, AttributeError, TypeError):
            malformed += 1
    if len(ids) > MAX_SELECTION:
        raise KeyActionError(f"Select at most {MAX_SELECTION} keys at a time.")
    return list(ids), malformed


def select_for_revocation(org: Organization, values: list[str], role: str, *, lock: bool = False) -> Selection:
    """Sort the selected ids (raw form values) by what revoking them would do, for the confirmation page and
    again, with the rows locked, when it is confirmed. Only ``org``'s keys are ever read."""
    ids, malformed = selected_ids(values)
    query = org_scoped(ApiKey, org.id).where(ApiKey.id.in_(ids))
    if lock:  # in id order, so two bulk revocations at once cannot deadlock
        query = query.order_by(ApiKey.id).with_for_update().execution_options(populate_existing=True)
    found = {api_key.id: api_key for api_key in db.session.scalars(query)} if ids else {}
    moment = utcnow()
    revocable, not_working, not_permitted = [], [], []
    for key_id in ids:
        api_key = found.get(key_id)
        if api_key is None:
            continue
        if api_key.status_at(moment) not in ("active", "expiring"):
            not_working.append(api_key)
        elif not role_allows(role, key_permission(api_key.environment)):
            not_permitted.append(api_key)
        else:
            revocable.append(api_key)
    return Selection(revocable, not_working, not_permitted, malformed + len(ids) - len(found))


def revoke_keys(org: Organization, values: list[str], actor: User, role: str, *, ip: str | None = None) -> Selection:
    """Revoke every selected key ``role`` may revoke and that still works, in one transaction, with one
    ``key.revoked`` event each as :func:`portal.keys.services.revoke_key` writes; the rest are left alone and
    reported."""
    selection = select_for_revocation(org, values, role, lock=True)
    moment = utcnow()
    for api_key in selection.revocable:
        _revoke(org, api_key, actor, moment, ip=ip)
    db.session.commit()
    return selection
