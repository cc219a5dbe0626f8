"""The organization a request acts on, and what the signed-in member may do there."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa
from flask import abort, g, make_response, render_template
from flask_login import current_user, login_required

from portal.extensions import db
from portal.models import Membership, Organization
from portal.orgs import lifecycle
from portal.roles import role_allows

F = TypeVar("F", bound=Callable[..., Any])


def can(permission: str) -> bool:
    membership: Membership | None = g.get("membership")
    return membership is not None and role_allows(membership.role, permission)


def memberships_of(user_id: Any) -> list[Membership]:
    return list(
        db.session.scalars(
            sa.select(Membership)
            .join(Membership.organization)
            .where(Membership.user_id == user_id, Organization.deleted_at.is_(None))
            .order_by(Organization.name, Organization.slug)
        )
    )


def load_membership(slug: str) -> Membership:
    """The signed-in user's membership in ``slug``; 404 when there is none, so foreign orgs look absent.

    A former member (an open tab after being removed, or after the organization was deleted) gets a page
    saying what happened instead: 403, or 410 for a deleted organization."""
    membership = db.session.scalar(
        sa.select(Membership)
        .join(Membership.organization)
        .where(Organization.slug == slug, Membership.user_id == current_user.id, Organization.deleted_at.is_(None))
    )
    if membership is None:
        gone = lifecycle.departure(slug, current_user)
        if gone is None:
            abort(404)
        page = render_template("orgs/departed.html", departure=gone)
        abort(make_response(page, 410 if gone.deleted else 403))
    return membership


def org_view(permission: str = "read") -> Callable[[F], F]:
    """Decorate a view under ``/orgs/<slug>``: loads ``g.org`` and ``g.membership``, checks ``permission``."""

    def decorator(view: F) -> F:
        @functools.wraps(view)
        @login_required
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            membership = load_membership(kwargs["slug"])
            g.membership = membership
            g.org = membership.organization
            if current_user.last_organization_id != g.org.id:
                lifecycle.remember_org(current_user, g.org)
            if not role_allows(membership.role, permission):
                abort(403, f"Your role ({membership.role}) cannot do this here.")
            return view(*args, **kwargs)

        return wrapped  # type: ignore[return-value]

    return decorator
