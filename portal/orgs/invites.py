"""Opening and accepting an invite link (``/invite/<token>``)."""

from __future__ import annotations

import re
from typing import Any

from flask import flash, redirect, render_template, request, url_for
from flask_login import current_user

from portal.forms import ConfirmForm
from portal.models import Invitation
from portal.orgs import bp, invitations, services

ASK_AGAIN = "Ask the person who invited you for a new link."
STATE_MESSAGES = {
    invitations.InviteState.EXPIRED: ("This invitation has expired", ASK_AGAIN),
    invitations.InviteState.REVOKED: ("This invitation was revoked", ASK_AGAIN),
    invitations.InviteState.ACCEPTED: (
        "This invitation was already used",
        "Each link works once. Ask for a new one if you still need to join.",
    ),
}


INVITE_PATH = re.compile(r"^/invite/([A-Za-z0-9_-]{20,128})$")


def invitation_for_next(next_url: str | None) -> Invitation | None:
    """The pending invitation a sign-up came from (its ``next`` is the invite page), else ``None``."""
    match = INVITE_PATH.match(next_url or "")
    if match is None:
        return None
    invitation, usable = _lookup(match.group(1))
    return invitation if usable else None


def _unusable(invitation: Invitation | None) -> Any:
    """404 for a link we never issued, 410 for one that is expired, revoked or used; nothing is written."""
    if invitation is None:
        message = "This invitation link is not valid. Check that you copied all of it."
        return render_template("orgs/invite_invalid.html", title="Invitation not found", message=message), 404
    title, message = STATE_MESSAGES[invitations.invite_state(invitation)]
    return render_template("orgs/invite_invalid.html", title=title, message=message), 410


def _lookup(token: str) -> tuple[Invitation | None, bool]:
    """The invitation for ``token`` and whether it can still be accepted."""
    invitation = invitations.find_invitation(token) if 20 <= len(token) <= 128 else None
    usable = invitation is not None and invitations.invite_state(invitation) is invitations.InviteState.PENDING
    return invitation, usable


def _page(invitation: Invitation, token: str, status: int = 200, error: str | None = None) -> Any:
    blocker = invitations.invitation_blocker(invitation, current_user) if current_user.is_authenticated else None
    membership = (
        services.membership_of(invitation.organization_id, current_user) if current_user.is_authenticated else None
    )
    return render_template(
        "orgs/invite.html",
        invitation=invitation,
        token=token,
        blocker=error or blocker,
        membership=membership,
        form=ConfirmForm(formdata=None),
        next_path=url_for("orgs.invitation", token=token),
    ), status


@bp.get("/invite/<token>", endpoint="invitation")
def open_invitation(token: str) -> Any:
    invitation, usable = _lookup(token)
    if not usable:
        return _unusable(invitation)
    assert invitation is not None
    return _page(invitation, token)


@bp.post("/invite/<token>")
def accept_invitation(token: str) -> Any:
    invitation, usable = _lookup(token)
    if not usable:
        return _unusable(invitation)
    assert invitation is not None
    if not current_user.is_authenticated:
        return redirect(url_for("auth.login", next=request.path))
    if not ConfirmForm().validate_on_submit():
        return _page(invitation, token, 400, "The form expired. Try again.")
    try:
        membership = invitations.accept_invitation(token, current_user, ip=request.remote_addr)
    except services.OrgActionError as exc:
        invitation, usable = _lookup(token)
        if not usable:
            return _unusable(invitation)
        assert invitation is not None
        return _page(invitation, token, 409, str(exc))
    org = membership.organization
    flash(f"Welcome to {org.name}! You joined as {membership.role}.", "success")
    return redirect(url_for("keys.index", slug=org.slug))
