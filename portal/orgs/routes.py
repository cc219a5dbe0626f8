"""Organization pages: landing, creating another organization, settings and the audit trail."""

from __future__ import annotations

from typing import Any

from flask import current_app, flash, g, redirect, render_template, request, session, url_for
from flask_login import current_user, login_required

from portal.http import page_arg, render_form_page
from portal.orgs import bp, services
from portal.orgs.context import memberships_of, org_view
from portal.orgs.forms import LeakActionForm, OrgNameForm
from portal.twofactor.forms import OrgTwoFactorForm


@bp.get("/")
@login_required
def home() -> Any:
    """Send a member to the organization they last used, else their first one."""
    memberships = memberships_of(current_user.id)
    if not memberships:
        return render_template("orgs/no_org.html")
    slugs = [m.organization.slug for m in memberships]
    slug = session.get("last_org") if session.get("last_org") in slugs else slugs[0]
    return redirect(url_for("keys.index", slug=slug))


@bp.get("/orgs/<slug>/")
@org_view()
def overview(slug: str) -> Any:
    return redirect(url_for("keys.index", slug=g.org.slug))


@bp.route("/orgs/new", methods=["GET", "POST"])
@login_required
def create() -> Any:
    form = OrgNameForm()
    if form.validate_on_submit():
        org = services.create_org(form.name.data, current_user, ip=request.remote_addr)
        flash(f"{org.name} is ready. You are its owner.", "success")
        return redirect(url_for("keys.index", slug=org.slug))
    return render_form_page("orgs/new.html", form=form)


@bp.route("/orgs/<slug>/settings", methods=["GET", "POST"])
@org_view("org.settings")
def settings(slug: str) -> Any:
    form = OrgNameForm(obj=g.org) if request.method == "GET" else OrgNameForm()
    if form.validate_on_submit():
        services.rename_org(g.org, form.name.data, current_user, ip=request.remote_addr)
        flash("Organization renamed.", "success")
        return redirect(url_for("orgs.settings", slug=g.org.slug))
    two_factor_form = OrgTwoFactorForm(formdata=None, require=g.org.require_two_factor)
    leak_form = LeakActionForm(formdata=None, action=g.org.leak_action)
    return render_form_page(
        "orgs/settings.html", form=form, plan=g.org.plan_info, two_factor_form=two_factor_form, leak_form=leak_form
    )


@bp.get("/orgs/<slug>/audit")
@org_view()
def audit(slug: str) -> Any:
    page = page_arg()
    events = services.audit_events(g.org, page=page, per_page=current_app.config["AUDIT_PER_PAGE"])
    return render_template("orgs/audit.html", events=events)
