"""Inputs and sequences an attacker (or a clumsy client) tries; each must end in a clear answer, not a 500."""

from __future__ import annotations

import sqlalchemy as sa

from portal.extensions import db
from portal.models import Invitation, Membership
from tests import factories


def test_backslash_next_is_not_followed(client, owner):
    response = client.post("/login?next=/%5Cevil.example", data={"email": owner.email, "password": factories.PASSWORD})
    assert response.headers["Location"] == "/"


def test_very_long_email_at_sign_in_is_a_form_answer(client):
    response = client.post("/login", data={"email": "a" * 240 + "@example.com", "password": "whatever!!"})
    assert response.status_code in (401, 422)


def test_nul_bytes_are_refused_cleanly(client, auth, org, owner):
    assert client.post("/login", data={"email": "a\x00b@example.com", "password": "x"}).status_code == 400
    auth.login(owner)
    assert client.get("/orgs/%00/keys/").status_code in (400, 404)
    assert client.get(f"/orgs/{org.slug}/keys/?env=%00").status_code == 400


def test_absurd_page_numbers_are_clamped(client, auth, org, owner):
    auth.login(owner)
    assert client.get(f"/orgs/{org.slug}/keys/?page=99999999999999999999").status_code == 200
    assert client.get(f"/orgs/{org.slug}/audit?page=99999999999999999999").status_code == 200


def test_wrong_passwords_from_one_address_do_not_lock_out_the_owner_elsewhere(app, owner):
    attacker = app.test_client()
    for _ in range(app.config["LOGIN_MAX_FAILURES_PER_ACCOUNT"] + 1):
        attacker.post(
            "/login",
            data={"email": owner.email, "password": "wrong password!"},
            environ_base={"REMOTE_ADDR": "203.0.113.9"},
        )
    blocked = attacker.post(
        "/login",
        data={"email": owner.email, "password": factories.PASSWORD},
        environ_base={"REMOTE_ADDR": "203.0.113.9"},
    )
    assert blocked.status_code == 429
    owner_client = app.test_client()
    response = owner_client.post(
        "/login",
        data={"email": owner.email, "password": factories.PASSWORD},
        environ_base={"REMOTE_ADDR": "198.51.100.7"},
    )
    assert response.status_code == 302


def test_sign_in_starts_a_fresh_expiring_session(client, owner):
    with client.session_transaction() as sess:
        sess["last_org"] = "someone-elses-org"
    response = client.post("/login", data={"email": owner.email, "password": factories.PASSWORD})
    cookie = next(c for c in response.headers.getlist("Set-Cookie") if c.startswith("procode_session="))
    assert "Expires=" in cookie
    with client.session_transaction() as sess:
        assert "last_org" not in sess


def test_any_member_can_leave(client, auth, org, owner):
    viewer = factories.member(org, "viewer")
    mine = db.session.scalar(sa.select(Membership).filter_by(user_id=viewer.id, organization_id=org.id))
    theirs = db.session.scalar(sa.select(Membership).filter_by(user_id=owner.id, organization_id=org.id))
    auth.login(viewer)
    assert client.post(f"/orgs/{org.slug}/members/{theirs.id}/remove").status_code == 403
    mine_id = mine.id
    assert client.post(f"/orgs/{org.slug}/members/{mine_id}/remove").status_code == 302
    assert db.session.scalar(sa.select(sa.func.count()).where(Membership.id == mine_id)) == 0


def test_removed_admin_cannot_rejoin_with_their_own_invite_link(client, auth, org, owner):
    admin = factories.member(org, "admin")
    auth.login(admin)
    response = client.post(f"/orgs/{org.slug}/invitations", data={"role": "admin"})
    assert response.status_code in (200, 302)
    invitation = db.session.scalar(sa.select(Invitation).where(Invitation.created_by_id == admin.id))
    assert invitation is not None and invitation.revoked_at is None
    auth.logout()
    auth.login(owner)
    target = db.session.scalar(sa.select(Membership).filter_by(user_id=admin.id, organization_id=org.id))
    assert client.post(f"/orgs/{org.slug}/members/{target.id}/remove").status_code == 302
    db.session.refresh(invitation)
    assert invitation.revoked_at is not None


def test_staff_area_is_404_even_for_a_post_without_csrf(csrf_app, owner):
    client = csrf_app.test_client()
    client.get("/login")
    assert client.post("/staff/orgs/00000000-0000-0000-0000-000000000000/plan").status_code == 404
