"""Template globals and filters: navigation state, dates, permissions."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import Flask, g
from flask_login import current_user

from portal.models import Membership
from portal.orgs.context import can, memberships_of
from portal.orgs.lifecycle import landing_membership
from portal.roles import may_touch_role, role_allows
from portal.timeutil import utcnow


def format_dt(value: datetime | None, fmt: str = "%Y-%m-%d %H:%M UTC") -> str:
    return value.strftime(fmt) if value else "—"


def time_ago(value: datetime | None, now: datetime | None = None) -> str:
    """How long ago, in the largest whole unit ("5 minutes ago"); shown beside the exact time, never instead."""
    if value is None:
        return "—"
    seconds = ((now or utcnow()) - value).total_seconds()
    if seconds < 60:
        return "just now"
    for unit, size in (("year", 365 * 86400), ("month", 30 * 86400), ("day", 86400), ("hour", 3600)):
        if seconds >= size and (unit != "month" or seconds >= 45 * 86400):
            n = int(seconds // size)
            return f"{n} {unit}{'s' if n != 1 else ''} ago"
    n = int(seconds // 60)
    return f"{n} minute{'s' if n != 1 else ''} ago"


def register(app: Flask) -> None:
    app.jinja_env.filters["dt"] = format_dt
    app.jinja_env.filters["ago"] = time_ago
    app.jinja_env.globals["can"] = can
    app.jinja_env.globals["nav_allows"] = nav_allows
    app.jinja_env.globals["may_touch_role"] = may_touch_role
    app.jinja_env.globals["claim_autofocus"] = claim_autofocus

    @app.context_processor
    def navigation() -> dict[str, Any]:
        context: dict[str, Any] = {"current_org": g.get("org"), "current_membership": g.get("membership")}
        context["nav_membership"] = g.get("membership")
        if current_user.is_authenticated:
            context["my_memberships"] = memberships_of(current_user.id)
            if context["nav_membership"] is None:
                context["nav_membership"] = _nav_fallback(context["my_memberships"])
        return context


def _nav_fallback(memberships: list[Membership]) -> Membership | None:
    """On pages outside an organization (account, docs, staff) the nav keeps the last organization's links,
    so a member is never left without a way back to Keys, Members and Audit."""
    return landing_membership(current_user, memberships)


def claim_autofocus() -> bool:
    """True the first time a page asks: two ``autofocus`` fields would leave the browser to pick one."""
    if g.get("autofocus_claimed"):
        return False
    g.autofocus_claimed = True
    return True


def nav_allows(membership: Membership | None, permission: str) -> bool:
    return membership is not None and role_allows(membership.role, permission)
