from __future__ import annotations

import re
import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa

from portal.extensions import db
from portal.models import AuditEvent, Invitation, Membership, Organization, User
from portal.orgs import invitations, services
from portal.security import token_digest
from tests import factories


def _invite(client, org, **data):
    form = {"role": "developer", "email": ""}
    form.update(data)
    return client.post(f"/orgs/{org.slug}/invitations", data=form)


def _link(response):
    body = response.get_data(as_text=True)
    match = re.search(r'id="invite-link" class="secret-value">([^<]+)<', body)
    assert match, body
    return match.group(1)


def _path(link):
    return "/invite/" + link.rsplit("/invite/", 1)[1]


def _count(model, **filters):
    return db.session.scalar(sa.select(sa.func.count()).select_from(model).filter_by(**filters))


def test_admin_creates_a_link_shown_once_and_only_its_hash_is_stored(client, auth, org, owner, app):
    admin = factories.member(org, "admin")
    auth.login(admin)
    response = _invite(client, org, role="viewer", email="New.Person@Example.com")
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    link = _link(response)
    token = link.rsplit("/", 1)[1]
    assert link.startswith("http://localhost/invite/")
    invitation = db.session.scalar(sa.select(Invitation).filter_by(organization_id=org.id))
    assert invitation.token_hash == token_digest(token)
    assert invitation.role == "viewer" and invitation.email == "new.person@example.com"
    ttl = app.config["INVITATION_TTL"]
    assert timedelta(0) < invitation.expires_at - invitation.created_at <= ttl + timedelta(seconds=5)
    stored = db.session.execute(sa.text("SELECT row_to_json(invitations)::text FROM invitations")).scalar()
    assert token not in stored
    [event] = db.session.scalars(sa.select(AuditEvent).filter_by(action="member.invited"))
    assert event.details["role"] == "viewer" and token not in str(event.details)
    # The members page lists it as pending, without the link.
    members_page = client.get(f"/orgs/{org.slug}/members").get_data(as_text=True)
    assert "new.person@example.com" in members_page and token not in members_page


def test_invite_bad_input_is_422_and_nothing_written(client, auth, org, owner):
    auth.login(owner)
    for data in ({"role": "emperor"}, {"email": "not-an-email"}, {"email": "x" * 250 + "@example.com"}):
        response = _invite(client, org, **data)
        assert response.status_code == 422
    assert "Invalid email address." in _invite(client, org, email="nope").get_data(as_text=True)
    assert _count(Invitation) == 0 and _count(AuditEvent, action="member.invited") == 0


def test_only_owners_invite_owners(client, auth, org, owner):
    admin = factories.member(org, "admin")
    auth.login(admin)
    assert _invite(client, org, role="owner").status_code == 422  # not offered to admins
    assert _count(Invitation) == 0
    auth.logout()
    auth.login(owner)
    assert _invite(client, org, role="owner").status_code == 200


def test_signed_in_user_accepts_and_joins(client, auth, org, owner):
    auth.login(owner)
    path = _path(_link(_invite(client, org, role="admin")))
    auth.logout()
    newcomer = factories.user(name="Newcomer")
    auth.login(newcomer)
    page = client.get(path)
    assert page.status_code == 200
    body = page.get_data(as_text=True)
    assert org.name in body and "admin" in body and "Accept and join" in body
    response = client.post(path)
    assert response.status_code == 302 and response.headers["Location"].endswith(f"/orgs/{org.slug}/keys/")
    membership = db.session.scalar(sa.select(Membership).filter_by(user_id=newcomer.id))
    assert membership.role == "admin"
    invitation = db.session.scalar(sa.select(Invitation).filter_by(organization_id=org.id))
    assert invitation.accepted_at is not None and invitation.accepted_by_id == newcomer.id
    [event] = db.session.scalars(sa.select(AuditEvent).filter_by(action="member.joined"))
    assert event.actor_id == newcomer.id and event.details["role"] == "admin"
    # The link is used up.
    again = client.get(path)
    assert again.status_code == 410 and "already used" in again.get_data(as_text=True)


def test_signed_out_visitor_is_sent_to_sign_in_and_back(client, auth, org, owner):
    auth.login(owner)
    path = _path(_link(_invite(client, org)))
    auth.logout()
    page = client.get(path)
    assert page.status_code == 200
    body = page.get_data(as_text=True)
    assert org.name in body
    assert f"/login?next={path}" in body and f"/signup?next={path}" in body
    assert client.post(path).headers["Location"].endswith(f"/login?next={path}")
    user = factories.user()
    response = client.post(f"/login?next={path}", data={"email": user.email, "password": factories.PASSWORD})
    assert response.headers["Location"] == path
    assert client.post(path).status_code == 302
    assert _count(Membership, organization_id=org.id, user_id=user.id) == 1


def test_new_visitor_signs_up_and_comes_back(client, auth, org, owner):
    auth.login(owner)
    path = _path(_link(_invite(client, org)))
    auth.logout()
    signup = {"display_name": "Fresh", "email": "fresh@example.com", "password": "a long enough password"}
    response = client.post(f"/signup?next={path}", data=signup)
    assert response.status_code == 302 and response.headers["Location"].startswith("/signup/check-email?next=")
    check = client.get(response.headers["Location"]).get_data(as_text=True)
    login = f"/login?next={path}"
    assert f'href="{login}"' in check  # "Sign in" leads back to the invitation
    signed_in = client.post(login, data={"email": "fresh@example.com", "password": "a long enough password"})
    assert signed_in.headers["Location"] == path
    assert client.post(path).status_code == 302
    assert _count(Invitation, organization_id=org.id, accepted_at=None) == 0


def test_unknown_expired_revoked_tokens_write_nothing(client, auth, org, owner):
    auth.login(owner)
    expired_path = _path(_link(_invite(client, org)))
    revoked_path = _path(_link(_invite(client, org, role="viewer")))
    invitations = {i.role: i for i in db.session.scalars(sa.select(Invitation))}
    invitations["developer"].expires_at = invitations["developer"].created_at - timedelta(seconds=1)
    db.session.commit()
    revoke = client.post(f"/orgs/{org.slug}/invitations/{invitations['viewer'].id}/revoke")
    assert revoke.status_code == 302
    assert db.session.get(Invitation, invitations["viewer"].id).revoked_at is not None
    auth.logout()
    user = factories.user()
    auth.login(user)
    cases = (
        (expired_path, 410, "expired"),
        (revoked_path, 410, "revoked"),
        ("/invite/" + "x" * 43, 404, "not valid"),
        ("/invite/short", 404, "not valid"),
    )
    for path, status, text in cases:
        page = client.get(path)
        assert page.status_code == status and text in page.get_data(as_text=True)
        assert client.post(path).status_code == status
    assert _count(Membership, user_id=user.id) == 0
    assert _count(AuditEvent, action="member.joined") == 0


def test_already_a_member_gets_a_clear_message(client, auth, org, owner, member):
    auth.login(owner)
    path = _path(_link(_invite(client, org, role="viewer")))
    auth.logout()
    auth.login(member)
    page = client.get(path)
    assert page.status_code == 200
    assert "already a member" in page.get_data(as_text=True)
    response = client.post(path)
    assert response.status_code == 409 and "already a member" in response.get_data(as_text=True)
    assert (
        db.session.scalar(sa.select(Membership.role).filter_by(organization_id=org.id, user_id=member.id))
        == "developer"
    )
    assert _count(Invitation, accepted_at=None) == 1


def test_invitation_for_an_email_refuses_other_accounts(client, auth, org, owner):
    auth.login(owner)
    path = _path(_link(_invite(client, org, email="intended@example.com")))
    auth.logout()
    other = factories.user()
    auth.login(other)
    response = client.post(path)
    body = response.get_data(as_text=True)
    assert response.status_code == 409 and "for a different email address" in body
    assert "intended@example.com" not in body  # the link does not leak whom it was meant for
    assert _count(Membership, user_id=other.id) == 0
    auth.logout()
    intended = factories.user("Intended@Example.com")
    auth.login(intended)
    assert client.post(path).status_code == 302


def test_foreign_invitation_ids_are_404(client, auth, org, owner):
    other = factories.org()
    other_owner = factories.member(other, "owner")
    auth.login(other_owner)
    _invite(client, other)
    foreign = db.session.scalar(sa.select(Invitation).filter_by(organization_id=other.id))
    auth.logout()
    auth.login(owner)
    assert client.post(f"/orgs/{org.slug}/invitations/{foreign.id}/revoke").status_code == 404
    assert client.post(f"/orgs/{org.slug}/invitations/nonsense/revoke").status_code == 404
    assert db.session.get(Invitation, foreign.id).revoked_at is None
    # A developer cannot revoke even their own org's invitations.
    auth.logout()
    developer = factories.member(other, "developer")
    auth.login(developer)
    assert client.post(f"/orgs/{other.slug}/invitations/{foreign.id}/revoke").status_code == 403


@pytest.fixture
def shared_link(app):
    """Committed for real: an organization, an invite link and two people who both try to use it."""
    org = factories.org()
    owner = factories.member(org, "owner")
    first, second = factories.user(), factories.user()
    owner_membership = db.session.scalar(sa.select(Membership).filter_by(user_id=owner.id))
    issued = invitations.create_invitation(
        org, role="developer", email=None, ttl=timedelta(days=1), actor=owner, actor_membership=owner_membership
    )
    ids = (org.id, first.id, second.id)
    token, owner_id = issued.token, owner.id
    db.session.remove()
    yield token, ids
    db.session.remove()
    db.session.execute(sa.delete(Organization).where(Organization.id == ids[0]))
    db.session.execute(sa.delete(User).where(User.id.in_([*ids[1:], owner_id])))
    db.session.commit()


@pytest.mark.concurrency
def test_a_link_used_by_two_people_at_once_admits_one(app, shared_link):
    token, (org_id, *user_ids) = shared_link
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def accept(user_id):
        with app.app_context():
            user = db.session.get(User, user_id)
            barrier.wait()
            try:
                invitations.accept_invitation(token, user)
                outcomes.append("joined")
            except services.OrgActionError:
                outcomes.append("refused")
            finally:
                db.session.remove()

    threads = [threading.Thread(target=accept, args=(user_id,)) for user_id in user_ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["joined", "refused"]
    assert _count(Membership, organization_id=org_id, role="developer") == 1
