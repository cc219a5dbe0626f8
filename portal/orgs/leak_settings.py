"""The organization's leak response: what a secret-scanning report of one of its keys does (owners only)."""

from __future__ import annotations

from typing import Any

from flask import flash, g, redirect, request, url_for
from flask_login import current_user

from portal.http import render_form_page
from portal.keys import leaks
from portal.orgs import bp
from portal.orgs.context import org_view
from portal.orgs.forms import LeakActionForm, OrgNameForm
from portal.twofactor.forms import OrgTwoFactorForm


@bp.post("/orgs/<slug>/settings/leak-response")
@org_view("org.settings")
def leak_response(slug: str) -> Any:
    form = LeakActionForm()
    if form.validate_on_submit():
        try:
            changed = leaks.set_leak_action(g.org, form.action.data, current_user, ip=request.remote_addr)
        except leaks.LeakSettingError as exc:
            form.form_errors.append(str(exc))
        else:
            if changed:
                flash("Saved: " + leaks.LEAK_ACTION_LABELS[form.action.data].lower() + ".", "success")
            return redirect(url_for("orgs.settings", slug=g.org.slug))
    return render_form_page(
        "orgs/settings.html",
        form=OrgNameForm(obj=g.org),
        plan=g.org.plan_info,
        two_factor_form=OrgTwoFactorForm(formdata=None, require=g.org.require_two_factor),
        leak_form=form,
    )
