"""Webhook endpoint pages: the list, adding one, an endpoint's page (edit, pause, resume, enable, rotate, test,
delivery log, resend) and deleting one. Thin views over :mod:`portal.notify.webhooks` and
:mod:`portal.notify.webhook_log`; owners and admins only."""

from __future__ import annotations

import secrets
from typing import Any

from flask import abort, flash, g, make_response, redirect, render_template, request, url_for
from flask_login import current_user

from portal.forms import ConfirmForm
from portal.http import get_org_scoped_or_404, page_arg, render_form_page
from portal.models import WebhookEndpoint
from portal.notify import bp, webhook_log, webhooks
from portal.notify.catalogue import ALL_EVENTS, EVENTS
from portal.notify.forms import NewWebhookForm, RotateSecretForm, WebhookForm
from portal.orgs.context import org_view
from portal.timeutil import utcnow

MANAGE = "notifications.manage"


def _endpoint(endpoint_id: str) -> WebhookEndpoint:
    return get_org_scoped_or_404(WebhookEndpoint, g.org.id, endpoint_id)


def _back(endpoint: WebhookEndpoint, **args: Any) -> Any:
    return redirect(url_for("notify.webhook", slug=g.org.slug, endpoint_id=endpoint.id, **args))


def _field_error(form: Any, exc: webhooks.WebhookError) -> None:
    """Put a service's refusal on the field it is about, else on the form."""
    field = getattr(form, exc.field, None) if exc.field else None
    (field.errors if field is not None else form.form_errors).append(str(exc))


def _show_secret(issued: webhooks.IssuedSecret, headline: str) -> Any:
    """The one page that ever shows a signing secret: the answer to the POST that made it, never cached, never
    reachable again (a reload resubmits the form, which its token refuses)."""
    response = make_response(
        render_template("notify/secret.html", endpoint=issued.endpoint, secret=issued.secret, headline=headline)
    )
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/orgs/<slug>/webhooks", endpoint="webhooks")
@org_view(MANAGE)
def webhooks_page(slug: str) -> Any:
    endpoints = webhooks.list_endpoints(g.org)
    return render_template(
        "notify/webhooks.html",
        endpoints=endpoints,
        results=webhook_log.last_results(endpoints),
        limit=webhooks.MAX_ENDPOINTS,
        events_text=webhooks.events_text,
    )


@bp.route("/orgs/<slug>/webhooks/new", methods=["GET", "POST"])
@org_view(MANAGE)
def new_webhook(slug: str) -> Any:
    form = NewWebhookForm()
    if request.method == "GET":
        form.events.data = [ALL_EVENTS]
        form.request_token.data = secrets.token_urlsafe(16)
    if form.validate_on_submit():
        try:
            issued = webhooks.create_endpoint(
                g.org,
                url=form.url.data,
                events=form.events.data,
                description=form.description.data,
                actor=current_user,
                request_token=(form.request_token.data or "")[:64] or None,
                ip=request.remote_addr,
            )
        except webhooks.AlreadyDone as exc:
            flash(str(exc), "warning")
            if exc.endpoint is None:
                return redirect(url_for("notify.webhooks", slug=g.org.slug))
            return _back(exc.endpoint)
        except webhooks.WebhookError as exc:
            _field_error(form, exc)
        else:
            return _show_secret(issued, "Endpoint added")
    count = len(webhooks.list_endpoints(g.org))
    return render_form_page("notify/new_webhook.html", form=form, count=count, limit=webhooks.MAX_ENDPOINTS)


@bp.get("/orgs/<slug>/webhooks/<endpoint_id>")
@org_view(MANAGE)
def webhook(slug: str, endpoint_id: str) -> Any:
    return _render_endpoint(_endpoint(endpoint_id))


def _render_endpoint(endpoint: WebhookEndpoint, failed: Any = None) -> str:
    """The endpoint page; ``failed`` (an edit or rotate form with errors) replaces its blank twin."""
    edit_form = WebhookForm(formdata=None, obj=endpoint)
    rotate_form = RotateSecretForm(formdata=None)
    if isinstance(failed, RotateSecretForm):
        rotate_form = failed
    elif failed is not None:
        edit_form = failed
    rotate_form.request_token.data = secrets.token_urlsafe(16)
    failed_only = request.args.get("show") == webhook_log.FAILED_FILTER
    return render_template(
        "notify/webhook.html",
        endpoint=endpoint,
        edit_form=edit_form,
        rotate_form=rotate_form,
        confirm_form=ConfirmForm(),
        log=webhook_log.delivery_log(endpoint, page=page_arg(), failed_only=failed_only),
        failed_only=failed_only,
        events_text=webhooks.events_text,
        event_label=webhook_log.event_label,
        catalogue=EVENTS,
        now=utcnow(),
    )


@bp.post("/orgs/<slug>/webhooks/<endpoint_id>/edit")
@org_view(MANAGE)
def edit_webhook(slug: str, endpoint_id: str) -> Any:
    endpoint = _endpoint(endpoint_id)
    form = WebhookForm()
    if form.validate_on_submit():
        try:
            changed = webhooks.update_endpoint(
                g.org,
                endpoint,
                url=form.url.data,
                events=form.events.data,
                description=form.description.data,
                actor=current_user,
                ip=request.remote_addr,
            )
        except webhooks.WebhookError as exc:
            _field_error(form, exc)
        else:
            flash(f"Saved: {', '.join(changed)} changed." if changed else "Nothing changed.", "success")
            return _back(endpoint)
    return _render_endpoint(endpoint, failed=form), 422


def _state_change(endpoint_id: str, change: Any, done: str) -> Any:
    """A button on the endpoint page (pause, resume, enable, test): CSRF-checked, then ``change``."""
    endpoint = _endpoint(endpoint_id)
    if not ConfirmForm().validate_on_submit():
        abort(400)
    try:
        change(g.org, endpoint, actor=current_user, ip=request.remote_addr)
    except webhooks.WebhookError as exc:
        flash(str(exc), "warning")
    else:
        flash(done, "success")
    return _back(endpoint)


@bp.post("/orgs/<slug>/webhooks/<endpoint_id>/pause")
@org_view(MANAGE)
def pause_webhook(slug: str, endpoint_id: str) -> Any:
    return _state_change(endpoint_id, webhooks.pause, "Paused. New events wait and are sent when you resume.")


@bp.post("/orgs/<slug>/webhooks/<endpoint_id>/resume")
@org_view(MANAGE)
def resume_webhook(slug: str, endpoint_id: str) -> Any:
    return _state_change(endpoint_id, webhooks.resume, "Resumed. Waiting events are sent now.")


@bp.post("/orgs/<slug>/webhooks/<endpoint_id>/enable")
@org_view(MANAGE)
def enable_webhook(slug: str, endpoint_id: str) -> Any:
    return _state_change(
        endpoint_id,
        webhooks.enable,
        "Enabled. New events are sent to it again; resend what failed from the delivery log.",
    )


@bp.post("/orgs/<slug>/webhooks/<endpoint_id>/test")
@org_view(MANAGE)
def test_webhook(slug: str, endpoint_id: str) -> Any:
    paused = _endpoint(endpoint_id).paused_at is not None
    later = " It is sent when you resume the endpoint." if paused else " It appears in the delivery log below."
    return _state_change(endpoint_id, webhook_log.send_test, "Test event queued." + later)


@bp.post("/orgs/<slug>/webhooks/<endpoint_id>/rotate")
@org_view(MANAGE)
def rotate_webhook_secret(slug: str, endpoint_id: str) -> Any:
    endpoint = _endpoint(endpoint_id)
    form = RotateSecretForm()
    if form.validate_on_submit():
        try:
            issued = webhooks.rotate_secret(
                g.org,
                endpoint,
                form.overlap.data,
                actor=current_user,
                request_token=(form.request_token.data or "")[:64] or None,
                ip=request.remote_addr,
            )
        except webhooks.AlreadyDone as exc:
            flash(str(exc), "warning")
            return _back(endpoint)
        except webhooks.WebhookError as exc:
            _field_error(form, exc)
        else:
            return _show_secret(issued, "New signing secret")
    return _render_endpoint(endpoint, failed=form), 422


@bp.route("/orgs/<slug>/webhooks/<endpoint_id>/delete", methods=["GET", "POST"])
@org_view(MANAGE)
def delete_webhook(slug: str, endpoint_id: str) -> Any:
    """A GET shows what deleting would drop; only the confirmed POST deletes."""
    endpoint = _endpoint(endpoint_id)
    form = ConfirmForm()
    if form.validate_on_submit():
        url = endpoint.url
        webhooks.delete_endpoint(g.org, endpoint, actor=current_user, ip=request.remote_addr)
        flash(f"Endpoint {url} deleted. It gets no more events.", "success")
        return redirect(url_for("notify.webhooks", slug=g.org.slug))
    return render_form_page(
        "notify/confirm_delete_webhook.html",
        form=form,
        endpoint=endpoint,
        pending=webhooks.pending_deliveries(endpoint),
        events_text=webhooks.events_text,
    )


@bp.post("/orgs/<slug>/webhooks/<endpoint_id>/deliveries/<delivery_id>/resend")
@org_view(MANAGE)
def resend_delivery(slug: str, endpoint_id: str, delivery_id: str) -> Any:
    endpoint = _endpoint(endpoint_id)
    delivery = webhook_log.find_delivery(endpoint, delivery_id)
    if delivery is None:
        abort(404)
    if not ConfirmForm().validate_on_submit():
        abort(400)
    try:
        webhook_log.resend(g.org, endpoint, delivery, actor=current_user, ip=request.remote_addr)
    except webhooks.WebhookError as exc:
        flash(str(exc), "warning")
    else:
        flash("Queued again as a new delivery; it is at the top of the log.", "success")
    back = {"show": request.args["show"]} if request.args.get("show") == webhook_log.FAILED_FILTER else {}
    return _back(endpoint, **back)
