"""Off-boarding a member: the keys they created that still work, with revoke, roll and "revoke all" (the key
pages' own confirmations, which come back here).

The page is reached from the members page before removing someone (or leaving), and right after a removal
that left working keys behind. It is keyed by the person's account, so it still works once they are gone.
"""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
from flask import abort, g, render_template
from flask_login import current_user

from portal.db import org_scoped
from portal.extensions import db
from portal.forms import ConfirmForm
from portal.keys import offboarding as member_keys
from portal.keys.forms import RollKeyForm
from portal.models import ApiKey, Membership, User
from portal.orgs import bp
from portal.orgs import services as org_services
from portal.orgs.context import can, org_view
from portal.roles import is_last_owner, key_permission, may_change_member
from portal.timeutil import utcnow


def _person(user_id: str) -> tuple[User, Membership | None]:
    """The member (or former member) being off-boarded; 404 for anyone with no tie to this organization."""
    try:
        uid = uuid.UUID(user_id)
    except ValueError:
        abort(404)
    if uid != current_user.id and not can("members.manage"):
        abort(403, f"Your role ({g.membership.role}) cannot manage members.")
    user = db.session.get(User, uid)
    if user is None:
        abort(404)
    membership = db.session.scalar(org_scoped(Membership, g.org.id).where(Membership.user_id == uid))
    created_here = db.session.scalar(
        sa.select(sa.exists().where(ApiKey.organization_id == g.org.id, ApiKey.created_by_id == uid))
    )
    if membership is None and not created_here:
        abort(404)
    return user, membership


@bp.get("/orgs/<slug>/offboarding/<user_id>")
@org_view()
def offboarding(slug: str, user_id: str) -> Any:
    user, membership = _person(user_id)
    keys = member_keys.active_keys_created_by(g.org, user.id)
    manageable = {k.id for k in keys if can(key_permission(k.environment))}
    leaving = user.id == current_user.id
    may_remove = membership is not None and (leaving or may_change_member(g.membership.role, membership.role))
    last_owner = membership is not None and is_last_owner(membership.role, org_services.owner_count(g.org))
    return render_template(
        "orgs/offboarding.html",
        person=user,
        membership=membership,
        leaving=leaving,
        may_remove=may_remove and not last_owner,
        last_owner=last_owner,
        keys=keys,
        manageable=manageable,
        roll_forms={k.id: RollKeyForm(formdata=None) for k in keys if k.id in manageable and k.replaced_by_id is None},
        confirm_form=ConfirmForm(formdata=None),
        now=utcnow(),
    )
