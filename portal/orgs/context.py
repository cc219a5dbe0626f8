"""The organization a request acts on, and what the signed-in member may do there."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa
from flask import abort, g, session
from flask_login import current_user, login_required

from portal.extensions import db
from portal.models import Membership, Organization
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
            .where(Membership.user_id == user_id)
            .order_by(Organization.name)
        )
    )


def load_membership(slug: str) -> Membership:
    """The signed-in user's membership in ``slug``; 404 when there is none, so foreign orgs look absent."""
    membership = db.session.scalar(
        sa.select(Membership)
        .join(Membership.organization)
        .where(Organization.slug == slug, Membership.user_id == current_user.id)
    )
    if membership is None:
        abort(404)
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
            session["last_org"] = g.org.slug
            if not role_allows(membership.role, permission):
                abort(403, f"Your role ({membership.role}) cannot do this here.")
            return view(*args, **kwargs)

        return wrapped  # type: ignore[return-value]

    return decorator
