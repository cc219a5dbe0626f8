"""The rotation watch on a rolled key's page: its traffic since the roll, and more time when it needs it."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import abort, flash, g, redirect, request, url_for
from flask_login import current_user

from portal.http import get_org_scoped_or_404
from portal.keys import bp, rotation
from portal.keys.rotation_forms import ExtendGraceForm, QuietHoursForm
from portal.keys.services import KeyActionError
from portal.models import ApiKey
from portal.orgs.context import can, org_view
from portal.roles import key_permission
from portal.timeutil import utcnow


def watch_context(api_key: ApiKey, grace_form: ExtendGraceForm | None = None) -> dict[str, Any]:
    """What the key page needs for its rotation watch; empty unless the key is in a grace period."""
    quiet_form = QuietHoursForm(formdata=request.args if "quiet_hours" in request.args else None)
    quiet_hours = rotation.DEFAULT_QUIET_HOURS
    if "quiet_hours" in request.args and quiet_form.validate():
        quiet_hours = quiet_form.quiet_hours.data
    watch = rotation.watch(api_key, quiet_hours)
    if watch is None:
        return {}
    return {
        "watch": watch,
        "quiet_form": quiet_form,
        "grace_form": grace_form or ExtendGraceForm(formdata=None),
    }


@bp.post("/<key_id>/grace")
@org_view("keys.manage_test")
def extend_grace(slug: str, key_id: str) -> Any:
    from portal.keys.routes import _render_detail

    api_key = get_org_scoped_or_404(ApiKey, g.org.id, key_id)
    if not can(key_permission(api_key.environment)):
        abort(403, f"Your role ({g.membership.role}) cannot manage {api_key.environment} keys.")
    back = redirect(url_for("keys.detail", slug=g.org.slug, key_id=api_key.id))
    if not rotation.in_grace(api_key, utcnow()):
        flash(rotation.NOT_IN_GRACE, "error")  # the page has no grace form to show the error on
        return back
    form = ExtendGraceForm()
    if form.validate_on_submit():
        try:
            until = rotation.extend_grace(
                g.org, api_key, timedelta(hours=form.extend_hours.data), current_user, ip=request.remote_addr
            )
        except KeyActionError as exc:
            form.form_errors.append(str(exc))
        else:
            flash(f"The old key now keeps working until {until:%Y-%m-%d %H:%M} UTC.", "success")
            return back
    return _render_detail(api_key, grace_form=form), 422
