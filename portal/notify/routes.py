"""Notification pages: the organization's recent events (the bell's page)."""

from __future__ import annotations

from typing import Any

from flask import g, render_template

from portal.http import page_arg
from portal.notify import bp, feed
from portal.orgs.context import org_view


@bp.get("/orgs/<slug>/events")
@org_view()
def events(slug: str) -> Any:
    """What happened in the organization that people were told about, newest first."""
    return render_template("notify/feed.html", events=feed.recent(g.org.id, page=page_arg()))
