"""The members page: who belongs to the organization, their roles, and invite links."""

from __future__ import annotations

from typing import Any

from flask import abort, current_app, flash, g, make_response, redirect, render_template, request, url_for
from flask_login import current_user

from portal.forms import ConfirmForm, choices
from portal.http import get_org_scoped_or_404
from portal.keys.offboarding import active_keys_created_by
from portal.models import Invitation, Membership
from portal.orgs import bp, invitations, services
from portal.orgs.context import can, org_view
from portal.orgs.forms import ROLE_LABELS, InviteForm, RoleForm, role_choices
from portal.roles import grantable_roles, is_last_owner, may_change_member, may_touch_role


def _grantable() -> tuple[str, ...]:
    return grantable_roles(g.membership.role)


def _may_change(target: Membership) -> bool:
    return may_change_member(g.membership.role, target.role)


def _invite_form(form: InviteForm | None = None) -> InviteForm:
    form = form or InviteForm(formdata=None)
    form.role.choices = choices([(r, ROLE_LABELS[r]) for r in _grantable()])
    return form


def _render(status: int = 200, *, error: str | None = None, invite_form: InviteForm | None = None) -> Any:
    members = services.list_members(g.org)
    role_forms = {}
    if can("members.manage"):
        grantable = role_choices(_grantable())
        for m in members:
            if _may_change(m):
                form = RoleForm(formdata=None, data={"role": m.role})
                form.role.choices = grantable
                role_forms[m.id] = form
    return render_template(
        "orgs/members.html",
        members=members,
        role_forms=role_forms,
        error=error,
        invite_form=_invite_form(invite_form) if can("members.manage") else None,
        invitations=invitations.pending_invitations(g.org) if can("members.manage") else [],
        confirm_form=ConfirmForm(formdata=None),
        ttl_days=current_app.config["INVITATION_TTL"].days,
    ), status


@bp.get("/orgs/<slug>/members")
@org_view()
def members(slug: str) -> Any:
    return _render()


@bp.post("/orgs/<slug>/members/<membership_id>/role")
@org_view("members.manage")
def change_role(slug: str, membership_id: str) -> Any:
    target = get_org_scoped_or_404(Membership, g.org.id, membership_id)
    form = RoleForm()
    if not form.validate_on_submit():
        return _render(422, error="Pick one of the listed roles.")
    name = target.user.display_name
    try:
        services.change_role(
            g.org, target, form.role.data, actor=current_user, actor_membership=g.membership, ip=request.remote_addr
        )
    except services.OrgActionError as exc:
        return _render(exc.status, error=str(exc))
    flash(f"{name} is now {form.role.data}.", "success")
    return redirect(url_for("orgs.members", slug=slug))


def _removable(membership_id: str) -> Membership:
    """The membership to remove: one's own (leaving), or one an admin or owner may change; else 404/403."""
    target = get_org_scoped_or_404(Membership, g.org.id, membership_id)
    if target.id != g.membership.id and not can("members.manage"):
        abort(403, f"Your role ({g.membership.role}) cannot manage members.")
    if target.id != g.membership.id and not _may_change(target):
        abort(403, "Only an owner can remove an owner.")
    return target


@bp.get("/orgs/<slug>/members/<membership_id>/remove")
@org_view()
def confirm_remove_member(slug: str, membership_id: str) -> Any:
    """What removing (or leaving) does, asked on a page of its own: nothing changes until its form is sent."""
    target = _removable(membership_id)
    leaving = target.id == g.membership.id
    return render_template(
        "orgs/confirm_remove.html",
        target=target,
        leaving=leaving,
        keys=active_keys_created_by(g.org, target.user_id),
        invitations=invitations.pending_invitations_from(g.org, target.user_id),
        last_owner=is_last_owner(target.role, services.owner_count(g.org)),
        form=ConfirmForm(formdata=None),
    )


@bp.post("/orgs/<slug>/members/<membership_id>/remove")
@org_view()
def remove_member(slug: str, membership_id: str) -> Any:
    """Admins remove others; anyone may remove themselves (leave)."""
    target = _removable(membership_id)
    if not ConfirmForm().validate_on_submit():
        return _render(400, error="The form expired. Try again.")
    name, leaving = target.user.display_name, target.user_id == current_user.id
    user_id = target.user_id
    try:
        services.remove_member(g.org, target, actor=current_user, actor_membership=g.membership, ip=request.remote_addr)
    except services.OrgActionError as exc:
        return _render(exc.status, error=str(exc))
    left_behind = len(active_keys_created_by(g.org, user_id))
    if leaving:
        flash(f"You left {g.org.name}.", "success")
        if left_behind:
            flash(f"{left_behind} key(s) you created there still work; its admins can revoke them.", "warning")
        return redirect(url_for("orgs.home"))
    if left_behind:
        flash(
            f"{name} was removed from {g.org.name}. {left_behind} key(s) they created still work: "
            "revoke or roll them here.",
            "warning",
        )
        return redirect(url_for("orgs.offboarding", slug=slug, user_id=user_id))
    flash(f"{name} was removed from {g.org.name}.", "success")
    return redirect(url_for("orgs.members", slug=slug))


@bp.post("/orgs/<slug>/invitations")
@org_view("members.manage")
def create_invitation(slug: str) -> Any:
    form = _invite_form(InviteForm())
    if not form.validate_on_submit():
        return _render(422, invite_form=form)
    try:
        issued = invitations.create_invitation(
            g.org,
            role=form.role.data,
            email=form.email.data,
            ttl=current_app.config["INVITATION_TTL"],
            actor=current_user,
            actor_membership=g.membership,
            ip=request.remote_addr,
        )
    except services.OrgActionError as exc:
        return _render(exc.status, error=str(exc), invite_form=form)
    link = url_for("orgs.invitation", token=issued.token, _external=True)
    page = render_template("orgs/invite_created.html", invitation=issued.invitation, link=link)
    response = make_response(page)
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/orgs/<slug>/invitations/<invitation_id>/revoke")
@org_view("members.manage")
def confirm_revoke_invitation(slug: str, invitation_id: str) -> Any:
    """The invitation, and what revoking it does; a link no longer pending says so (409) with nothing to send."""
    invitation = get_org_scoped_or_404(Invitation, g.org.id, invitation_id)
    if not _may_change_invitation(invitation):
        abort(403, "Only an owner can revoke an invitation for an owner.")
    pending = invitations.invite_state(invitation) is invitations.InviteState.PENDING
    page = render_template(
        "orgs/confirm_revoke_invitation.html",
        invitation=invitation,
        state=invitations.invite_state(invitation).value,
        pending=pending,
        form=ConfirmForm(formdata=None),
    )
    return page, 200 if pending else 409


def _may_change_invitation(invitation: Invitation) -> bool:
    return may_touch_role(g.membership.role, invitation.role)


@bp.post("/orgs/<slug>/invitations/<invitation_id>/revoke")
@org_view("members.manage")
def revoke_invitation(slug: str, invitation_id: str) -> Any:
    invitation = get_org_scoped_or_404(Invitation, g.org.id, invitation_id)
    if not ConfirmForm().validate_on_submit():
        return _render(400, error="The form expired. Try again.")
    try:
        invitations.revoke_invitation(
            g.org, invitation, actor=current_user, actor_membership=g.membership, ip=request.remote_addr
        )
    except services.OrgActionError as exc:
        return _render(exc.status, error=str(exc))
    flash("Invitation revoked; its link no longer works.", "success")
    return redirect(url_for("orgs.members", slug=slug))
