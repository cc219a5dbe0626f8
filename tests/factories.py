"""Builders for test data that read like the product. Each goes through the same services as the portal."""

from __future__ import annotations

import itertools
from typing import Any

from portal.auth import services as auth_services
from portal.extensions import db
from portal.keys import services as key_services
from portal.models import Membership, Organization, User

PASSWORD = "correct horse battery"
_seq = itertools.count(1)


def user(email: str | None = None, name: str | None = None, *, is_staff: bool = False, verified: bool = True) -> User:
    """An account; its address counts as verified unless ``verified=False``."""
    n = next(_seq)
    u = auth_services.create_user(
        email or f"user{n}@example.com", name or f"User {n}", PASSWORD, is_staff=is_staff, verified=verified
    )
    db.session.commit()
    return u


def org(name: str | None = None, plan: str = "free") -> Organization:
    n = next(_seq)
    o = Organization(name=name or f"Org {n}", slug=f"org-{n}", plan=plan)
    db.session.add(o)
    db.session.commit()
    return o


def member(organization: Organization, role: str = "developer", u: User | None = None) -> User:
    u = u or user()
    db.session.add(Membership(user_id=u.id, organization_id=organization.id, role=role))
    db.session.commit()
    return u


def api_key(
    organization: Organization,
    actor: User | None = None,
    *,
    environment: str = "test",
    name: str = "Test key",
    **kwargs: Any,
) -> key_services.IssuedKey:
    return key_services.create_key(organization, name=name, environment=environment, actor=actor, **kwargs)
