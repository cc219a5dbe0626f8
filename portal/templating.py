"""Template globals and filters: navigation state, dates, permissions."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import Flask, current_app, g
from flask_login import current_user

from portal.orgs.context import can, memberships_of


def format_dt(value: datetime | None, fmt: str = "%Y-%m-%d %H:%M UTC") -> str:
    return value.strftime(fmt) if value else "—"


def register(app: Flask) -> None:
    app.jinja_env.filters["dt"] = format_dt
    app.jinja_env.globals["can"] = can
    app.jinja_env.globals["has_endpoint"] = lambda name: name in current_app.view_functions

    @app.context_processor
    def navigation() -> dict[str, Any]:
        context: dict[str, Any] = {"current_org": g.get("org"), "current_membership": g.get("membership")}
        if current_user.is_authenticated:
            context["my_memberships"] = memberships_of(current_user.id)
        return context
