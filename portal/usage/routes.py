"""Thin views: members see their organization's usage, staff see any organization's, read-only."""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
from flask import abort, current_app, g, make_response, render_template, request, url_for
from flask_login import current_user

from portal.extensions import db
from portal.http import get_org_scoped_or_404, page_arg
from portal.models import ApiKey, Organization
from portal.orgs.context import org_view
from portal.usage import bp, pages, services
from portal.usage.ranges import COMMON_ZONES, RANGE_LABELS
from portal.usage.services import Table


@bp.app_template_filter("thousands")
def thousands(value: int | float) -> str:
    return f"{value:,}"


def _table_or_404(page: pages.UsagePage) -> Table:
    table = page.tables.get(request.args.get("table", "series"))
    if table is None:
        abort(404)
    return table


def _render(template: str, page: pages.UsagePage, csv_endpoint: str, csv_args: dict[str, Any], **context: Any) -> Any:
    args = pages.query_args(page.r)
    response = make_response(
        render_template(
            template,
            page=page,
            r=page.r,
            range_labels=RANGE_LABELS,
            zones=COMMON_ZONES,
            args=args,
            api_base=current_app.config["PUBLIC_API_BASE"],
            csv_url=lambda table: url_for(csv_endpoint, **{**csv_args, **args, "table": table}),
            **context,
        )
    )
    return pages.remember_zone(response)


def _member_key_link(slug: str) -> Any:
    return lambda key_id: url_for("usage.key", slug=slug, key_id=key_id)


@bp.get("/orgs/<slug>/usage")
@org_view()
def dashboard(slug: str) -> Any:
    page = pages.org_page(g.org, _member_key_link(slug))
    return _render("usage/dashboard.html", page, "usage.dashboard_csv", {"slug": slug}, org=g.org, staff_view=False)


@bp.get("/orgs/<slug>/usage.csv")
@org_view()
def dashboard_csv(slug: str) -> Any:
    page = pages.org_page(g.org, _member_key_link(slug))
    name = request.args.get("table", "series")
    return pages.csv_response(_table_or_404(page), f"usage-{slug}-{name}-{page.r.key}.csv")


@bp.get("/orgs/<slug>/keys/<key_id>/usage")
@org_view()
def key(slug: str, key_id: str) -> Any:
    api_key = get_org_scoped_or_404(ApiKey, g.org.id, key_id)
    page = pages.key_page(g.org, api_key)
    per_page = current_app.config["USAGE_RECENT_PER_PAGE"]
    calls = services.recent_calls(g.org.id, api_key.id, page_arg(), per_page)
    return _render(
        "usage/key.html",
        page,
        "usage.key_csv",
        {"slug": slug, "key_id": api_key.id},
        org=g.org,
        api_key=api_key,
        calls=calls,
    )


@bp.get("/orgs/<slug>/keys/<key_id>/usage.csv")
@org_view()
def key_csv(slug: str, key_id: str) -> Any:
    api_key = get_org_scoped_or_404(ApiKey, g.org.id, key_id)
    page = pages.key_page(g.org, api_key)
    name = request.args.get("table", "series")
    return pages.csv_response(_table_or_404(page), f"usage-key-{api_key.hint}-{name}-{page.r.key}.csv")


def _staff_org(org_id: str) -> Organization:
    """Staff only; everyone else gets the 404 the staff area gives (it does not exist for them)."""
    if not current_user.is_authenticated or not current_user.is_staff:
        abort(404)
    try:
        org = db.session.get(Organization, uuid.UUID(org_id))
    except ValueError:  # support staff often know the slug, not the id
        org = db.session.scalar(sa.select(Organization).where(Organization.slug == org_id[:100]))
    if org is None:
        abort(404)
    return org


@bp.get("/staff/orgs/<org_id>/usage")
def staff_org(org_id: str) -> Any:
    org = _staff_org(org_id)
    page = pages.org_page(org, lambda _key_id: None)
    return _render("usage/dashboard.html", page, "usage.staff_org_csv", {"org_id": org.id}, org=org, staff_view=True)


@bp.get("/staff/orgs/<org_id>/usage.csv")
def staff_org_csv(org_id: str) -> Any:
    org = _staff_org(org_id)
    page = pages.org_page(org, lambda _key_id: None)
    name = request.args.get("table", "series")
    return pages.csv_response(_table_or_404(page), f"usage-{org.slug}-{name}-{page.r.key}.csv")
