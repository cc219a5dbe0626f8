"""Organization pages: landing, creating another organization, settings and the audit trail."""

from __future__ import annotations

from typing import Any

from flask import current_app, flash, g, redirect, render_template, request, url_for
from flask_login import current_user, login_required

from portal.forms import choices
from portal.http import page_arg, render_form_page
from portal.orgs import audit_queries, bp, lifecycle, services
from portal.orgs.auditlog import action_label, target_names
from portal.orgs.context import memberships_of, org_view
from portal.orgs.forms import AuditFilterForm, DeleteOrgForm, LeakActionForm, OrgNameForm
from portal.twofactor.forms import OrgTwoFactorForm


@bp.get("/")
@login_required
def home() -> Any:
    """Send a member to the organization they used last (kept on the account), else their first one."""
    landing = lifecycle.landing_membership(current_user, memberships_of(current_user.id))
    if landing is None:
        return render_template("orgs/no_org.html")
    return redirect(url_for("keys.index", slug=landing.organization.slug))


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
    """The audit log, filtered by who, what and when (query-string filters the page links keep)."""
    form = AuditFilterForm(request.args)
    actors, actions = audit_queries.audit_choices(g.org)
    form.actor.choices = choices([("", "Anyone"), *((a, a) for a in actors)])
    form.action.choices = choices([("", "Any action"), *((a, action_label(a)) for a in actions)])
    valid = form.validate()

    def chosen(field: Any) -> Any:
        return field.data if field.data and not field.errors else None

    filters = audit_queries.AuditFilters(
        actor=chosen(form.actor), action=chosen(form.action), since=chosen(form.since), until=chosen(form.until)
    )
    if form.until.errors:  # an end before the start: show the error, keep the start
        filters = audit_queries.AuditFilters(actor=filters.actor, action=filters.action, since=filters.since)
    events = audit_queries.audit_events(
        g.org, page=page_arg(), per_page=current_app.config["AUDIT_PER_PAGE"], filters=filters
    )
    page = render_template(
        "orgs/audit.html",
        events=events,
        targets=target_names(events.items),
        filters=form,
        filter_args=filters.query_args(),
    )
    return page, 200 if valid else 422


@bp.route("/orgs/<slug>/delete", methods=["GET", "POST"])
@org_view("org.settings")
def delete(slug: str) -> Any:
    """Owners delete the organization after typing its name or slug; a GET only shows what would end."""
    form = DeleteOrgForm()
    if form.validate_on_submit():
        if not lifecycle.confirmation_matches(g.org, form.confirmation.data):
            form.confirmation.errors.append(f"Type “{g.org.name}” or “{g.org.slug}” exactly.")
        else:
            name = g.org.name
            try:
                revoked = lifecycle.delete_org(
                    g.org, actor=current_user, actor_membership=g.membership, ip=request.remote_addr
                )
            except services.OrgActionError as exc:
                form.form_errors.append(str(exc))
                impact = lifecycle.deletion_impact(g.org)
                return render_form_page("orgs/confirm_delete.html", exc.status, form=form, impact=impact)
            flash(f"{name} is deleted. {revoked} key{'s' if revoked != 1 else ''} revoked; members removed.", "success")
            return redirect(url_for("orgs.home"))
    return render_form_page("orgs/confirm_delete.html", form=form, impact=lifecycle.deletion_impact(g.org))
