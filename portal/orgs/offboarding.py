"""Off-boarding a member: the keys they created that still work, with revoke, roll and "revoke all".

The page is reached from the members page before removing someone (or leaving), and right after a removal
that left working keys behind. It is keyed by the person's account, so it still works once they are gone.
"""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
from flask import abort, flash, g, redirect, render_template, request, url_for
from flask_login import current_user

from portal.db import org_scoped
from portal.extensions import db
from portal.forms import ConfirmForm
from portal.http import get_org_scoped_or_404
from portal.keys import offboarding as member_keys
from portal.keys.forms import RollKeyForm
from portal.keys.services import KeyActionError
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


def _back(user: User) -> Any:
    return redirect(url_for("orgs.offboarding", slug=g.org.slug, user_id=user.id))


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


@bp.post("/orgs/<slug>/offboarding/<user_id>/keys/<key_id>/revoke")
@org_view()
def offboarding_revoke(slug: str, user_id: str, key_id: str) -> Any:
    user, _ = _person(user_id)
    api_key = get_org_scoped_or_404(ApiKey, g.org.id, key_id)
    if api_key.created_by_id != user.id:
        abort(404)
    if not can(key_permission(api_key.environment)):
        abort(403, f"Your role ({g.membership.role}) cannot manage {api_key.environment} keys.")
    if ConfirmForm().validate_on_submit():
        try:
            member_keys.revoke_member_keys(g.org, [api_key], creator=user, actor=current_user, ip=request.remote_addr)
        except KeyActionError as exc:
            flash(str(exc), "error")
        else:
            flash(f"Key “{api_key.name}” ({api_key.hint}) is revoked. Calls with it now fail.", "success")
    return _back(user)


@bp.post("/orgs/<slug>/offboarding/<user_id>/revoke-all")
@org_view()
def offboarding_revoke_all(slug: str, user_id: str) -> Any:
    user, _ = _person(user_id)
    if not ConfirmForm().validate_on_submit():
        return _back(user)
    keys = member_keys.active_keys_created_by(g.org, user.id)
    mine = [k for k in keys if can(key_permission(k.environment))]
    try:
        count = member_keys.revoke_member_keys(g.org, mine, creator=user, actor=current_user, ip=request.remote_addr)
    except KeyActionError as exc:
        flash(str(exc) if mine else "There is no key here that you may revoke.", "error")
    else:
        flash(f"Revoked {count} key{'s' if count != 1 else ''} created by {user.display_name}.", "success")
    if len(mine) < len(keys):
        flash(f"{len(keys) - len(mine)} live key(s) are left: only an admin or owner can revoke them.", "warning")
    return _back(user)
