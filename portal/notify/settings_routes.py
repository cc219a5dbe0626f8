"""The organization's notification settings page: who gets which mail, and the idle-key threshold."""

from __future__ import annotations

from typing import Any

from flask import flash, g, redirect, request, url_for
from flask_login import current_user

from portal.http import render_form_page
from portal.notify import bp, rules
from portal.notify.catalogue import ACCOUNT_EVENTS, EVENTS
from portal.notify.forms import NotificationSettingsForm, field_key
from portal.orgs.context import org_view


@bp.route("/orgs/<slug>/settings/notifications", methods=["GET", "POST"])
@org_view("notifications.manage")
def settings(slug: str) -> Any:
    org_rules = rules.mail_rules(g.org)
    if request.method == "POST":
        form = NotificationSettingsForm()
    else:
        form = NotificationSettingsForm(data=NotificationSettingsForm.initial(org_rules, g.org.idle_key_days))
    if form.validate_on_submit():
        try:
            changes = rules.save(g.org, form.chosen(), form.idle_key_days.data, current_user, ip=request.remote_addr)
        except rules.SettingsError as exc:
            target = form.idle_key_days if exc.field == "idle_key_days" else None
            if exc.field in EVENTS:
                target = form.event_fields(exc.field)[1]
            (target.errors if target is not None else form.form_errors).append(str(exc))  # type: ignore[union-attr]
        else:
            flash("Notification settings saved." if changes else "Nothing changed.", "success" if changes else "info")
            return redirect(url_for("notify.settings", slug=g.org.slug))
    return render_form_page(
        "notify/settings.html", form=form, rules=org_rules, field_key=field_key, account_events=ACCOUNT_EVENTS
    )
