from __future__ import annotations

from typing import Any

from flask import g, redirect, render_template, session, url_for
from flask_login import current_user, login_required

from portal.orgs import bp
from portal.orgs.context import memberships_of, org_view


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
