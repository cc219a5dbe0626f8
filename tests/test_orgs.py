from __future__ import annotations

import pytest
import sqlalchemy as sa

from portal import audit
from portal.extensions import db
from portal.models import AuditEvent, Membership, Organization
from tests import factories

ROLE_MATRIX = [
    # role, keys page, create a test key, create a live key, manage members, settings
    ("viewer", 200, 403, 403, 403, 403),
    ("developer", 200, 200, 422, 403, 403),
    ("admin", 200, 200, 200, 200, 403),
    ("owner", 200, 200, 200, 200, 200),
]


@pytest.mark.parametrize(("role", "read", "test_key", "live_key", "members", "settings"), ROLE_MATRIX)
def test_roles_are_enforced_on_every_kind_of_route(
    client, auth, org, role, read, test_key, live_key, members, settings
):
    if role != "owner":
        factories.member(org, "owner")
    user = factories.member(org, role)
    auth.login(user)
    base = f"/orgs/{org.slug}"
    assert client.get(f"{base}/keys/").status_code == read
    assert client.get(f"{base}/members").status_code == 200
    assert client.get(f"{base}/audit").status_code == 200
    key = {"name": "k", "request_token": f"t-{role}"}
    assert client.post(f"{base}/keys/new", data={**key, "environment": "test"}).status_code == test_key
    key["request_token"] += "-live"
    assert client.post(f"{base}/keys/new", data={**key, "environment": "live"}).status_code == live_key
    assert client.post(f"{base}/invitations", data={"role": "viewer"}).status_code == members
    assert client.get(f"{base}/settings").status_code == settings
    assert client.post(f"{base}/settings", data={"name": "Renamed"}).status_code == (
        302 if settings == 200 else settings
    )


def test_any_signed_in_user_creates_another_org_and_owns_it(client, auth, org, member):
    auth.login(member)
    response = client.post("/orgs/new", data={"name": "Side Project"})
    assert response.status_code == 302
    new = db.session.scalar(sa.select(Organization).where(Organization.name == "Side Project"))
    assert new.plan == "free" and response.headers["Location"].endswith(f"/orgs/{new.slug}/keys/")
    role = db.session.scalar(sa.select(Membership.role).filter_by(organization_id=new.id, user_id=member.id))
    assert role == "owner"
    # Both organizations are in the switcher.
    body = client.get(f"/orgs/{new.slug}/keys/").get_data(as_text=True)
    assert "Side Project" in body and org.name in body


def test_create_org_rejects_bad_names(client, auth, member):
    auth.login(member)
    before = db.session.scalar(sa.select(sa.func.count()).select_from(Organization))
    for name in ("", "   ", "x" * 101, "bad\x01name"):
        assert client.post("/orgs/new", data={"name": name}).status_code == 422
    assert client.post("/orgs/new", data={"name": "bad\x00name"}).status_code == 400
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Organization)) == before
    assert client.get("/orgs/new").status_code == 200


def test_create_org_requires_sign_in(client):
    assert client.post("/orgs/new", data={"name": "X"}).status_code == 302
    assert db.session.scalar(sa.select(Organization).where(Organization.name == "X")) is None


def test_owner_renames_in_settings_and_sees_the_plan(client, auth, org, owner):
    auth.login(owner)
    page = client.get(f"/orgs/{org.slug}/settings").get_data(as_text=True)
    for text in ("Free", "$0", "60 requests / minute", "10,000 requests", "up to 5"):
        assert text in page
    response = client.post(f"/orgs/{org.slug}/settings", data={"name": "Acme Corp"})
    assert response.status_code == 302
    assert db.session.get(Organization, org.id).name == "Acme Corp"
    [event] = db.session.scalars(sa.select(AuditEvent).filter_by(action="org.renamed"))
    assert event.details["to"] == "Acme Corp"
    # Bad input: 422, nothing written; the plan cannot be changed here.
    assert client.post(f"/orgs/{org.slug}/settings", data={"name": ""}).status_code == 422
    client.post(f"/orgs/{org.slug}/settings", data={"name": "Acme Corp", "plan": "enterprise"})
    org_now = db.session.get(Organization, org.id)
    assert org_now.name == "Acme Corp" and org_now.plan == "free"


def test_audit_page_lists_events_readably_for_any_member(client, auth, org, owner):
    viewer = factories.member(org, "viewer")
    factories.api_key(org, owner, name="Billing worker")
    auth.login(viewer)
    response = client.get(f"/orgs/{org.slug}/audit")
    assert response.status_code == 200
    body = response.get_data(as_text=True)
    assert "Key created" in body and "Billing worker" in body and "pk_test_" in body
    assert owner.display_name in body
    assert "{" not in body.split("<main", 1)[1].split("</main>", 1)[0]  # no raw JSON


def test_audit_page_is_paginated_and_scoped(client, auth, org, owner, app):
    other = factories.org()
    audit.record("org.renamed", organization_id=other.id, actor=None, details={"to": "Secret Co"})
    per_page = app.config["AUDIT_PER_PAGE"]
    for i in range(per_page + 3):
        audit.record("org.renamed", organization_id=org.id, actor=owner, details={"to": f"Name {i}"})
    db.session.commit()
    auth.login(owner)
    first = client.get(f"/orgs/{org.slug}/audit").get_data(as_text=True)
    assert "Page 1 of 2" in first and "Secret Co" not in first
    second = client.get(f"/orgs/{org.slug}/audit?page=2")
    assert second.status_code == 200 and "Page 2 of 2" in second.get_data(as_text=True)
    assert client.get(f"/orgs/{org.slug}/audit?page=abc").status_code == 200
    assert client.get(f"/orgs/{other.slug}/audit").status_code == 404


def test_org_pages_of_another_org_are_404(client, auth, org, owner):
    other = factories.org()
    factories.member(other, "owner")
    auth.login(owner)
    for path in ("audit", "settings", "members"):
        assert client.get(f"/orgs/{other.slug}/{path}").status_code == 404
    assert client.post(f"/orgs/{other.slug}/settings", data={"name": "Hijacked"}).status_code == 404
    assert db.session.get(Organization, other.id).name != "Hijacked"
