"""Thin views: members see their organization's usage (the staff view of any organization is in portal.staff)."""

from __future__ import annotations

from typing import Any

from flask import current_app, g, request, url_for

from portal.http import get_org_scoped_or_404, page_arg, upgrade_url
from portal.models import ApiKey
from portal.notify import banners
from portal.orgs.context import org_view
from portal.timeutil import utcnow
from portal.usage import bp, pages, services


@bp.app_template_filter("thousands")
def thousands(value: int | float) -> str:
    return f"{value:,}"


def _member_key_link(slug: str) -> Any:
    return lambda key_id: url_for("usage.key", slug=slug, key_id=key_id)


@bp.get("/orgs/<slug>/usage")
@org_view()
def dashboard(slug: str) -> Any:
    page = pages.org_page(g.org, _member_key_link(slug))
    return pages.render(
        "usage/dashboard.html",
        page,
        "usage.dashboard_csv",
        {"slug": slug},
        org=g.org,
        staff_view=False,
        banners=banners.for_org(g.org, utcnow(), quota=page.extra["quota"]),
        quota_upgrade_url=upgrade_url(banners.UPGRADE_SUBJECT),
    )


@bp.get("/orgs/<slug>/usage.csv")
@org_view()
def dashboard_csv(slug: str) -> Any:
    page = pages.org_page(g.org, _member_key_link(slug))
    name = request.args.get("table", "series")
    return pages.csv_response(pages.table_or_404(page), f"usage-{slug}-{name}-{page.r.key}.csv")


@bp.get("/orgs/<slug>/keys/<key_id>/usage")
@org_view()
def key(slug: str, key_id: str) -> Any:
    api_key = get_org_scoped_or_404(ApiKey, g.org.id, key_id)
    page = pages.key_page(g.org, api_key)
    per_page = current_app.config["USAGE_RECENT_PER_PAGE"]
    calls = services.recent_calls(g.org.id, api_key.id, page_arg(), per_page)
    return pages.render(
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
    return pages.csv_response(pages.table_or_404(page), f"usage-key-{api_key.hint}-{name}-{page.r.key}.csv")
