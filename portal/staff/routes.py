"""The support staff area: find an organization, see its state, change its plan."""

from __future__ import annotations

from typing import Any

from flask import abort, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user

from portal import mail
from portal.auth import reset
from portal.forms import ConfirmForm
from portal.http import get_org_scoped_or_404, page_arg
from portal.models import ENVIRONMENTS, KEY_STATUSES, Membership, Organization
from portal.orgs import audit_queries
from portal.orgs import services as org_services
from portal.orgs.auditlog import target_names
from portal.staff import bp, services
from portal.staff.forms import PlanChangeForm, QuotaExtensionForm
from portal.timeutil import utcnow

RECENT_EVENTS = 20


@bp.get("/")
def index() -> Any:
    query = request.args.get("q", "")[: services.MAX_QUERY_LENGTH]
    page = page_arg()
    result = services.search_orgs(query, page=page, per_page=current_app.config["STAFF_PER_PAGE"])
    return render_template("staff/index.html", query=query, result=result, mail_counts=mail.counts())


def _detail(
    org: Organization,
    form: PlanChangeForm | None = None,
    status: int = 200,
    quota_form: QuotaExtensionForm | None = None,
) -> Any:
    if form is None:
        form = PlanChangeForm(formdata=None, data={"plan": org.plan})
    month = services.month_start(utcnow())
    events = audit_queries.audit_events(org, per_page=RECENT_EVENTS).items
    return render_template(
        "staff/org_detail.html",
        org=org,
        plan=org.plan_info,
        form=form,
        members=org_services.list_members(org),
        counts=services.key_counts(org),
        environments=ENVIRONMENTS,
        statuses=KEY_STATUSES,
        events=events,
        targets=target_names(events),
        deletion=audit_queries.audit_event(org, "org.deleted") if org.deleted_at else None,
        confirm_form=ConfirmForm(formdata=None),
        quota_form=quota_form or QuotaExtensionForm(formdata=None),
        month=month,
        month_quota=org.quota_for(month),
    ), status


@bp.get("/orgs/<slug>")
def org_detail(slug: str) -> Any:
    org = org_services.find_org(slug) or abort(404)
    return _detail(org)


def _live_org(slug: str) -> Organization:
    """An organization staff may still change: a deleted one is shown, never changed (409)."""
    org = org_services.find_org(slug) or abort(404)
    if org.deleted_at is not None:
        abort(409, f"{org.name} was deleted on {org.deleted_at:%Y-%m-%d}; it no longer changes.")
    return org


@bp.post("/orgs/<slug>/plan")
def change_plan(slug: str) -> Any:
    org = _live_org(slug)
    form = PlanChangeForm()
    if form.validate_on_submit():
        if form.plan.data == org.plan:
            form.plan.errors.append(f"{org.name} is already on the {org.plan_info.label} plan.")
        else:
            org_services.change_plan(
                org,
                form.plan.data,
                reason=form.reason.data,
                actor=current_user,
                actor_label=org_services.SUPPORT_LABEL,
                ip=request.remote_addr,
            )
            flash(f"{org.name} is now on the {org.plan_info.label} plan.", "success")
            return redirect(url_for("staff.org_detail", slug=org.slug))
    return _detail(org, form, 422)


@bp.post("/orgs/<slug>/quota")
def extend_quota(slug: str) -> Any:
    """Grant extra calls for this UTC month (raises the Free plan's hard quota for the month)."""
    org = _live_org(slug)
    form = QuotaExtensionForm()
    if form.validate_on_submit():
        quota = services.extend_quota(
            org, form.calls.data or 0, reason=form.reason.data, actor=current_user, ip=request.remote_addr
        )
        flash(f"{org.name}'s quota for this month is now {quota:,} calls.", "success")
        return redirect(url_for("staff.org_detail", slug=org.slug))
    return _detail(org, status=422, quota_form=form)


@bp.post("/orgs/<slug>/members/<membership_id>/password-reset")
def send_password_reset(slug: str, membership_id: str) -> Any:
    """Mail a member a reset link; staff never see or set the password."""
    org = org_services.find_org(slug) or abort(404)
    membership = get_org_scoped_or_404(Membership, org.id, membership_id)
    if not ConfirmForm().validate_on_submit():
        flash("The form expired. Try again.", "error")
    else:
        user = membership.user
        reset.send_reset_by_staff(user, org, actor=current_user, ip=request.remote_addr)
        flash(f"A password reset link was mailed to {user.email}. It works for one hour.", "success")
    return redirect(url_for("staff.org_detail", slug=org.slug))
