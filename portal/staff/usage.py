"""Any organization's usage, read-only, for support staff."""

from __future__ import annotations

import uuid
from typing import Any

from flask import abort, request

from portal.extensions import db
from portal.models import Organization
from portal.orgs.services import find_org
from portal.staff import bp, require_staff
from portal.usage import pages


def _staff_org(org_ref: str) -> Organization:
    """Staff only, checked here too rather than trusting the app-wide guard; the id or, as support staff often
    know it, the slug."""
    require_staff()
    try:
        org = db.session.get(Organization, uuid.UUID(org_ref))
    except ValueError:
        org = find_org(org_ref[:100])
    if org is None:
        abort(404)
    return org


@bp.get("/orgs/<org_ref>/usage")
def org_usage(org_ref: str) -> Any:
    org = _staff_org(org_ref)
    page = pages.org_page(org, lambda _key_id: None)
    return pages.render(
        "usage/dashboard.html", page, "staff.org_usage_csv", {"org_ref": org.id}, org=org, staff_view=True
    )


@bp.get("/orgs/<org_ref>/usage.csv")
def org_usage_csv(org_ref: str) -> Any:
    org = _staff_org(org_ref)
    page = pages.org_page(org, lambda _key_id: None)
    name = request.args.get("table", "series")
    return pages.csv_response(pages.table_or_404(page), f"usage-{org.slug}-{name}-{page.r.key}.csv")
