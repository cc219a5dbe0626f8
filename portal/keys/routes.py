from __future__ import annotations

import secrets
from typing import Any

from flask import abort, current_app, flash, g, make_response, redirect, render_template, request, url_for
from flask_login import current_user

from portal.forms import ConfirmForm, choices
from portal.http import get_org_scoped_or_404, page_arg, render_form_page, upgrade_url
from portal.keys import bp, listing, policy, policy_changes, services
from portal.keys.forms import (
    CreateKeyForm,
    DetailsForm,
    ExpiryForm,
    PolicyForm,
    RenameKeyForm,
    RevokeKeyForm,
    RollKeyForm,
    end_of_day,
)
from portal.keys.rotation_routes import watch_context
from portal.models import ENVIRONMENTS, ApiKey
from portal.notify import banners
from portal.orgs.context import can, org_view
from portal.roles import key_permission
from portal.scopes import LABELS as SCOPE_LABELS
from portal.timeutil import utcnow
from portal.usage import forensics


def _require_env_permission(environment: str) -> None:
    if not can(key_permission(environment)):
        abort(403, f"Your role ({g.membership.role}) cannot manage {environment} keys.")


def _show_secret(issued: services.IssuedKey, headline: str) -> Any:
    """The one page that ever shows a key; it is never cached and never re-shown."""
    response = make_response(
        render_template(
            "keys/created.html",
            api_key=issued.api_key,
            plaintext=issued.plaintext,
            headline=headline,
            api_base=current_app.config["PUBLIC_API_BASE"],
        )
    )
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/")
@org_view()
def index(slug: str) -> Any:
    creators = services.key_creators(g.org)
    filters, problems = listing.parse(request.args, [user.id for user in creators])
    per_page = current_app.config["KEYS_PER_PAGE"]
    keys = services.list_keys(g.org, filters, page=page_arg(), per_page=per_page)
    now = utcnow()
    return render_template(
        "keys/index.html",
        keys=keys,
        filters=filters,
        problems=problems,
        creators=creators,
        statuses=listing.STATUS_LABELS,
        sorts=listing.SORTS,
        scope_labels=SCOPE_LABELS,
        full_access=listing.FULL_ACCESS,
        revocable_envs=[env for env in ENVIRONMENTS if can(key_permission(env))],
        bulk_form=ConfirmForm(),
        now=now,
        allowance=services.key_allowance(g.org),
        upgrade_url=_upgrade_url(),
        banners=banners.for_org(g.org, now),
        quota_upgrade_url=upgrade_url(banners.UPGRADE_SUBJECT),
    )


def _upgrade_url() -> str:
    """Where an organization at its key limit can go: the configured upgrade page, else a mail to support."""
    return upgrade_url("More API keys")


@bp.route("/new", methods=["GET", "POST"])
@org_view("keys.manage_test")
def create(slug: str) -> Any:
    form = CreateKeyForm()
    form.plan_limit = g.org.plan_info.requests_per_minute
    if not can("keys.manage_live"):
        form.environment.choices = choices([("test", "Test (pk_test_…)")])
    if request.method == "GET":
        form.request_token.data = secrets.token_urlsafe(16)
    if form.validate_on_submit():
        token = (form.request_token.data or "")[:64] or None
        _require_env_permission(form.environment.data)
        try:
            issued = services.create_key(
                g.org,
                name=form.name.data,
                environment=form.environment.data,
                actor=current_user,
                expires_at=end_of_day(form.expires_on.data),
                request_token=token,
                ip=request.remote_addr,
                key_policy=policy.KeyPolicy(
                    scopes=form.scopes.data,
                    allowed_ips=form.allowed_ips.data,
                    rate_limit=form.rate_limit.data,
                    meta=form.meta_json.data,
                    external_id=form.external_id.data,
                ),
            )
        except services.AlreadyCreated as exc:
            flash(str(exc), "warning")
            return redirect(url_for("keys.detail", slug=slug, key_id=exc.api_key.id))
        except services.KeyActionError as exc:
            form.form_errors.append(str(exc))
        else:
            return _show_secret(issued, "Your new key")
    return render_form_page(
        "keys/new.html", form=form, allowance=services.key_allowance(g.org), upgrade_url=_upgrade_url()
    )


@bp.get("/<key_id>")
@org_view()
def detail(slug: str, key_id: str) -> Any:
    return _render_detail(get_org_scoped_or_404(ApiKey, g.org.id, key_id))


def _managed_key(key_id: str) -> ApiKey:
    api_key = get_org_scoped_or_404(ApiKey, g.org.id, key_id)
    _require_env_permission(api_key.environment)
    return api_key


def _back(api_key: ApiKey) -> Any:
    return redirect(url_for("keys.detail", slug=g.org.slug, key_id=api_key.id))


@bp.post("/<key_id>/rename")
@org_view("keys.manage_test")
def rename(slug: str, key_id: str) -> Any:
    api_key = _managed_key(key_id)
    form = RenameKeyForm()
    if form.validate_on_submit():
        services.rename_key(g.org, api_key, form.name.data, current_user, ip=request.remote_addr)
        flash("Key renamed.", "success")
        return _back(api_key)
    return _invalid(api_key, form)


@bp.post("/<key_id>/expiry")
@org_view("keys.manage_test")
def expiry(slug: str, key_id: str) -> Any:
    api_key = _managed_key(key_id)
    form = ExpiryForm()
    if form.validate_on_submit():
        try:
            services.set_expiry(g.org, api_key, end_of_day(form.expires_on.data), current_user, ip=request.remote_addr)
        except services.KeyActionError as exc:
            form.form_errors.append(str(exc))
        else:
            flash("Expiry updated.", "success")
            return _back(api_key)
    return _invalid(api_key, form)


@bp.post("/<key_id>/policy")
@org_view("keys.manage_test")
def change_policy(slug: str, key_id: str) -> Any:
    api_key = _managed_key(key_id)
    form = PolicyForm()
    form.plan_limit = g.org.plan_info.requests_per_minute
    if form.validate_on_submit():
        try:
            policy_changes.set_policy(
                g.org,
                api_key,
                current_user,
                scopes=form.scopes.data,
                allowed_ips=form.allowed_ips.data,
                rate_limit=form.rate_limit.data,
                ip=request.remote_addr,
            )
        except services.KeyActionError as exc:
            form.form_errors.append(str(exc))
        else:
            flash("Key policy saved. It applies from the next call.", "success")
            return _back(api_key)
    return _invalid(api_key, form)


@bp.post("/<key_id>/details")
@org_view("keys.manage_test")
def change_details(slug: str, key_id: str) -> Any:
    api_key = _managed_key(key_id)
    form = DetailsForm()
    if form.validate_on_submit():
        try:
            policy_changes.set_details(
                g.org,
                api_key,
                current_user,
                meta=form.meta_json.data,
                external_id=form.external_id.data,
                ip=request.remote_addr,
            )
        except services.KeyActionError as exc:
            form.form_errors.append(str(exc))
        else:
            flash("Metadata and external id saved.", "success")
            return _back(api_key)
    return _invalid(api_key, form)


def _confirm(api_key: ApiKey, template: str, **forms: Any) -> Any:
    """A revoke or roll confirmation: what the key did in the last 24 hours, and who will notice."""
    if api_key.status_at(utcnow()) not in ("active", "expiring"):
        flash("This key no longer works; there is nothing to revoke or roll.", "warning")
        return _back(api_key)
    return _confirm_page(api_key, template, **forms)


def _confirm_page(api_key: ApiKey, template: str, **forms: Any) -> str:
    return render_template(template, api_key=api_key, impact=forensics.impact(g.org.id, api_key.id, utcnow()), **forms)


@bp.get("/<key_id>/revoke")
@org_view("keys.manage_test")
def confirm_revoke(slug: str, key_id: str) -> Any:
    api_key = _managed_key(key_id)
    return _confirm(api_key, "keys/confirm_revoke.html", form=_typed(RevokeKeyForm(formdata=None), api_key))


@bp.get("/<key_id>/roll")
@org_view("keys.manage_test")
def confirm_roll(slug: str, key_id: str) -> Any:
    api_key = _managed_key(key_id)
    form = _typed(RollKeyForm(formdata=None), api_key)
    if request.args.get("grace") in services.ROLL_GRACE_PERIODS:
        form.grace.data = request.args["grace"]
    return _confirm(api_key, "keys/confirm_roll.html", form=form)


def _typed(form: Any, api_key: ApiKey) -> Any:
    """A live key's confirmation asks for its name; a test key's form has no such field."""
    if api_key.environment != "live":
        del form.confirm_name
    elif isinstance(form, RollKeyForm):
        form.confirm_name.description = "Needed when the old key stops now: type its name exactly as shown above."
    return form


@bp.post("/<key_id>/revoke")
@org_view("keys.manage_test")
def revoke(slug: str, key_id: str) -> Any:
    api_key = _managed_key(key_id)
    form = _typed(RevokeKeyForm(), api_key)
    if not form.validate_on_submit():
        return _back(api_key)
    if not form.confirms(api_key.name, api_key.environment == "live"):
        return _confirm_page(api_key, "keys/confirm_revoke.html", form=form), 422
    try:
        services.revoke_key(g.org, api_key, current_user, ip=request.remote_addr)
    except services.KeyActionError as exc:
        flash(str(exc), "error")
    else:
        flash(f"Key “{api_key.name}” ({api_key.hint}) is revoked. Calls with it now fail.", "success")
    return _back(api_key)


@bp.post("/<key_id>/roll")
@org_view("keys.manage_test")
def roll(slug: str, key_id: str) -> Any:
    api_key = _managed_key(key_id)
    form = _typed(RollKeyForm(), api_key)
    if form.validate_on_submit() and form.confirms(
        api_key.name, api_key.environment == "live" and form.grace.data == "now"
    ):
        try:
            _, grace = services.ROLL_GRACE_PERIODS[form.grace.data]
            issued = services.roll_key(g.org, api_key, grace, current_user, ip=request.remote_addr)
        except services.KeyActionError as exc:
            flash(str(exc), "error")
            return _back(api_key)
        return _show_secret(issued, "Your rolled key")
    return _confirm_page(api_key, "keys/confirm_roll.html", form=form), 422


def _invalid(api_key: ApiKey, form: Any) -> Any:
    """Re-render the key page with the failing form's errors, answering 422."""
    return _render_detail(api_key, failed=form), 422


def _render_detail(api_key: ApiKey, failed: Any = None, grace_form: Any = None) -> str:
    """The key page with its forms; ``failed`` (or ``grace_form``) replaces its blank twin so its errors show."""
    forms: dict[str, Any] = {
        "rename_form": RenameKeyForm(name=api_key.name),
        "expiry_form": ExpiryForm(expires_on=api_key.expires_at.date() if api_key.expires_at else None),
        "policy_form": PolicyForm(
            scopes=api_key.scopes or [],
            allowed_ips="\n".join(api_key.allowed_ips or []),
            rate_limit=api_key.rate_limit,
        ),
        "details_form": DetailsForm(
            external_id=api_key.external_id or "",
            meta_json=policy.meta_text(api_key.meta) if api_key.meta else "",
        ),
    }
    if failed is not None:
        slot = {
            RenameKeyForm: "rename_form",
            ExpiryForm: "expiry_form",
            PolicyForm: "policy_form",
            DetailsForm: "details_form",
        }[type(failed)]
        forms[slot] = failed
    now = utcnow()
    window = forensics.window_arg(request.args.get("clients"))
    return render_template(
        "keys/detail.html",
        api_key=api_key,
        now=now,
        last_use=forensics.last_use(g.org.id, api_key.id),
        clients=forensics.recent_clients(g.org.id, api_key.id, window, now),
        windows=forensics.WINDOWS,
        may_manage=can(key_permission(api_key.environment)),
        **forms,
        **watch_context(api_key, grace_form),
    )
