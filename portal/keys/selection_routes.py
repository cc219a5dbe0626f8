"""Revoking several keys at once from the list (or the off-boarding page): a confirmation of what would change,
then the revocation, back where it was started."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from flask import flash, g, redirect, render_template, request, url_for
from flask_login import current_user

from portal.forms import ConfirmForm
from portal.http import safe_next_url
from portal.keys import bp, services
from portal.keys.selection import Selection, revoke_keys, select_for_revocation
from portal.orgs.context import org_view
from portal.timeutil import utcnow


def _list_url(slug: str, back: str | None) -> str:
    """Where a bulk revocation returns: the list as it was filtered, or the off-boarding page it was started
    from (same-site URLs of this organization), else the list."""
    home = url_for("keys.index", slug=slug)
    target = safe_next_url(back)
    if not target:
        return home
    path = urlsplit(target).path
    offboarding = url_for("orgs.offboarding", slug=slug, user_id="x")[:-1]
    return target if path == home or (path.startswith(offboarding) and "/" not in path[len(offboarding) :]) else home


def _ticked(slug: str) -> tuple[str, list[str] | None]:
    """Where a bulk revocation returns, and the ticked key ids of a CSRF-checked form (``None``, with a message
    for the page, when the form fails or nothing is ticked)."""
    back = _list_url(slug, request.form.get("back"))
    values = request.form.getlist("key")
    if not ConfirmForm().validate_on_submit() or not values:
        flash("Tick the keys to revoke first.", "warning")
        return back, None
    return back, values


@bp.post("/revoke-selected")
@org_view("keys.manage_test")
def revoke_selected(slug: str) -> Any:
    """Show what revoking the keys ticked on the list would do; nothing changes until it is confirmed."""
    back, values = _ticked(slug)
    if values is None:
        return redirect(back)
    try:
        selection = select_for_revocation(g.org, values, g.membership.role)
    except services.KeyActionError as exc:
        flash(str(exc), "error")
        return redirect(back)
    return render_template(
        "keys/revoke_selected.html", selection=selection, form=ConfirmForm(), back=back, now=utcnow()
    )


@bp.post("/revoke-selected/confirm")
@org_view("keys.manage_test")
def revoke_selected_confirm(slug: str) -> Any:
    """Revoke the ticked keys the member may revoke, and say which were left as they were and why."""
    back, values = _ticked(slug)
    if values is None:
        return redirect(back)
    try:
        selection = revoke_keys(g.org, values, current_user, g.membership.role, ip=request.remote_addr)
    except services.KeyActionError as exc:
        flash(str(exc), "error")
        return redirect(back)
    revoked = len(selection.revocable)
    if revoked:
        flash(f"{_keys(revoked)} revoked. Calls with {'it' if revoked == 1 else 'them'} now fail.", "success")
    if selection.left_out:
        flash(f"{_keys(selection.left_out)} left as they were: {_why_left_out(selection)}.", "warning")
    return redirect(back)


def _keys(n: int) -> str:
    return f"{n} key" if n == 1 else f"{n} keys"


def _why_left_out(selection: Selection) -> str:
    reasons = []
    if selection.not_working:
        reasons.append(f"{len(selection.not_working)} already revoked or expired")
    if selection.not_permitted:
        reasons.append(f"{len(selection.not_permitted)} live, which your role cannot revoke")
    if selection.missing:
        reasons.append(f"{selection.missing} not found in {g.org.name}")
    return ", ".join(reasons)
