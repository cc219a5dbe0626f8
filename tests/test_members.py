from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from portal.extensions import db
from portal.models import AuditEvent, Membership, Organization, User
from portal.orgs import services
from tests import factories


def _membership(org, user):
    return db.session.scalar(sa.select(Membership).filter_by(organization_id=org.id, user_id=user.id))


def _events(org, action):
    return list(db.session.scalars(sa.select(AuditEvent).filter_by(organization_id=org.id, action=action)))


def test_members_page_lists_everyone_for_any_member(client, auth, org, owner):
    viewer = factories.member(org, "viewer", factories.user("vera@example.com", "Vera Viewer"))
    auth.login(viewer)
    response = client.get(f"/orgs/{org.slug}/members")
    assert response.status_code == 200
    body = response.get_data(as_text=True)
    assert "Vera Viewer" in body and "vera@example.com" in body
    assert owner.email in body and "owner" in body
    # A viewer sees no role controls, no invite form.
    assert "/role" not in body and "Create invite link" not in body


def test_admin_changes_a_role_and_it_is_audited(client, auth, org, owner, member):
    admin = factories.member(org, "admin")
    auth.login(admin)
    target = _membership(org, member)
    response = client.post(f"/orgs/{org.slug}/members/{target.id}/role", data={"role": "viewer"})
    assert response.status_code == 302
    assert _membership(org, member).role == "viewer"
    [event] = _events(org, "member.role_changed")
    assert event.details["from"] == "developer" and event.details["to"] == "viewer"
    assert event.details["email"] == member.email and event.actor_id == admin.id
    assert "is now viewer" in client.get(response.headers["Location"]).get_data(as_text=True)


def test_viewer_and_developer_cannot_manage_members(client, auth, org, owner, member):
    viewer = factories.member(org, "viewer")
    target = _membership(org, factories.member(org, "viewer"))  # someone else: leaving oneself is allowed
    for user in (viewer, member):
        auth.login(user)
        base = f"/orgs/{org.slug}/members/{target.id}"
        assert client.post(f"{base}/role", data={"role": "admin"}).status_code == 403
        assert client.post(f"{base}/remove").status_code == 403
        assert client.post(f"/orgs/{org.slug}/invitations", data={"role": "viewer"}).status_code == 403
        auth.logout()
    assert db.session.get(Membership, target.id).role == "viewer"
    assert not _events(org, "member.role_changed") and not _events(org, "member.removed")


def test_bad_role_is_422_and_nothing_written(client, auth, org, owner, member):
    auth.login(owner)
    target = _membership(org, member)
    for data in ({"role": "superuser"}, {}, {"role": ""}):
        response = client.post(f"/orgs/{org.slug}/members/{target.id}/role", data=data)
        assert response.status_code == 422
        assert "Pick one of the listed roles." in response.get_data(as_text=True)
    assert _membership(org, member).role == "developer"
    assert not _events(org, "member.role_changed")


def test_last_owner_cannot_be_demoted_or_removed(client, auth, org, owner):
    auth.login(owner)
    mine = _membership(org, owner)
    response = client.post(f"/orgs/{org.slug}/members/{mine.id}/role", data={"role": "admin"})
    assert response.status_code == 409
    assert "The last owner cannot be demoted" in response.get_data(as_text=True)
    response = client.post(f"/orgs/{org.slug}/members/{mine.id}/remove")
    assert response.status_code == 409
    assert "The last owner cannot be removed" in response.get_data(as_text=True)
    assert _membership(org, owner).role == "owner"
    assert not _events(org, "member.role_changed") and not _events(org, "member.removed")


def test_with_two_owners_one_may_step_down(client, auth, org, owner):
    second = factories.member(org, "owner")
    auth.login(owner)
    mine = _membership(org, owner)
    assert client.post(f"/orgs/{org.slug}/members/{mine.id}/role", data={"role": "admin"}).status_code == 302
    assert _membership(org, owner).role == "admin"
    # Now ``second`` is the last owner.
    auth.logout()
    auth.login(second)
    theirs = _membership(org, second)
    assert client.post(f"/orgs/{org.slug}/members/{theirs.id}/remove").status_code == 409


def test_only_an_owner_grants_or_touches_owner(client, auth, org, owner, member):
    admin = factories.member(org, "admin")
    auth.login(admin)
    target = _membership(org, member)
    response = client.post(f"/orgs/{org.slug}/members/{target.id}/role", data={"role": "owner"})
    assert response.status_code == 403
    assert "Only an owner" in response.get_data(as_text=True)
    owner_row = _membership(org, owner)
    assert client.post(f"/orgs/{org.slug}/members/{owner_row.id}/role", data={"role": "viewer"}).status_code == 403
    assert client.post(f"/orgs/{org.slug}/members/{owner_row.id}/remove").status_code == 403
    assert _membership(org, member).role == "developer" and _membership(org, owner).role == "owner"
    # The members page offers the admin no controls on the owner's row.
    body = client.get(f"/orgs/{org.slug}/members").get_data(as_text=True)
    assert f"/members/{owner_row.id}/role" not in body and f"/members/{target.id}/role" in body
    auth.logout()
    auth.login(owner)
    response = client.post(f"/orgs/{org.slug}/members/{target.id}/role", data={"role": "owner"})
    assert response.status_code == 302 and _membership(org, member).role == "owner"


def test_admin_removes_a_member_and_it_is_audited(client, auth, org, owner, member):
    admin = factories.member(org, "admin")
    auth.login(admin)
    target = _membership(org, member)
    response = client.post(f"/orgs/{org.slug}/members/{target.id}/remove")
    assert response.status_code == 302
    assert _membership(org, member) is None
    [event] = _events(org, "member.removed")
    assert event.details["email"] == member.email and event.details["role"] == "developer"
    # The removed member no longer sees the organization.
    auth.logout()
    auth.login(member)
    response = client.get(f"/orgs/{org.slug}/keys/")
    assert response.status_code == 403
    assert f"You were removed from {org.name}" in response.get_data(as_text=True)


def test_foreign_and_malformed_membership_ids_are_404(client, auth, org, owner):
    other = factories.org()
    stranger = factories.member(other, "developer")
    foreign = _membership(other, stranger)
    auth.login(owner)
    for membership_id in (foreign.id, "not-a-uuid"):
        assert client.post(f"/orgs/{org.slug}/members/{membership_id}/role", data={"role": "viewer"}).status_code == 404
        assert client.post(f"/orgs/{org.slug}/members/{membership_id}/remove").status_code == 404
    assert _membership(other, stranger).role == "developer"


def test_another_orgs_members_page_is_404(client, auth, org, owner):
    other = factories.org()
    factories.member(other, "owner")
    auth.login(owner)
    assert client.get(f"/orgs/{other.slug}/members").status_code == 404
    assert client.get("/orgs/no-such-org/members").status_code == 404


def test_members_page_requires_sign_in(client, org):
    response = client.get(f"/orgs/{org.slug}/members")
    assert response.status_code == 302 and "/login" in response.headers["Location"]


def test_member_forms_need_the_csrf_token(csrf_app, org, owner, member):
    client = csrf_app.test_client()
    client.post(
        "/login", data={"email": owner.email, "password": factories.PASSWORD, "csrf_token": _csrf(client.get("/login"))}
    )
    page = client.get(f"/orgs/{org.slug}/members")
    assert page.status_code == 200
    target = _membership(org, member)
    url = f"/orgs/{org.slug}/members/{target.id}/role"
    assert client.post(url, data={"role": "viewer"}).status_code == 400
    assert _membership(org, member).role == "developer"
    assert client.post(url, data={"role": "viewer", "csrf_token": _csrf(page)}).status_code == 302
    assert _membership(org, member).role == "viewer"


def _csrf(response):
    body = response.get_data(as_text=True)
    return body.split('name="csrf_token" type="hidden" value="', 1)[1].split('"', 1)[0]


@pytest.fixture
def two_owners(app):
    """Committed for real: an organization with two owners, removed again afterwards."""
    org = factories.org()
    first, second = factories.member(org, "owner"), factories.member(org, "owner")
    ids = (org.id, first.id, second.id)
    db.session.remove()
    yield ids
    db.session.remove()
    db.session.execute(sa.delete(Organization).where(Organization.id == ids[0]))
    db.session.execute(sa.delete(User).where(User.id.in_(ids[1:])))
    db.session.commit()


@pytest.mark.concurrency
def test_two_owners_demoting_each_other_at_once_leave_one_owner(app, two_owners):
    org_id, first_id, second_id = two_owners
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def demote(actor_id, target_id):
        with app.app_context():
            org = db.session.get(Organization, org_id)
            actor = db.session.get(User, actor_id)
            mine = db.session.scalar(sa.select(Membership).filter_by(organization_id=org_id, user_id=actor_id))
            theirs = db.session.scalar(sa.select(Membership).filter_by(organization_id=org_id, user_id=target_id))
            barrier.wait()
            try:
                services.change_role(org, theirs, "admin", actor=actor, actor_membership=mine)
                outcomes.append("changed")
            except services.OrgActionError:
                outcomes.append("refused")
            finally:
                db.session.remove()

    pairs = ((first_id, second_id), (second_id, first_id))
    threads = [threading.Thread(target=demote, args=pair) for pair in pairs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["changed", "refused"]
    owners = db.session.scalar(
        sa.select(sa.func.count()).select_from(Membership).filter_by(organization_id=org_id, role="owner")
    )
    assert owners == 1
