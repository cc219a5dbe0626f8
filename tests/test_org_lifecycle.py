"""Leaving, removal and invite revocation confirmed on a page; deleting an organization; what a former member's
open tab says; where signing in lands; invite sign-ups; distinguishable slugs."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
import sqlalchemy as sa

from portal.extensions import db
from portal.keys import services as key_services
from portal.models import ApiKey, AuditEvent, Invitation, Membership, Organization, User
from portal.orgs import invitations, services
from tests import factories
from tests.api_helpers import verify


def _membership(org, user):
    return db.session.scalar(sa.select(Membership).filter_by(organization_id=org.id, user_id=user.id))


def _events(org, action):
    return list(db.session.scalars(sa.select(AuditEvent).filter_by(organization_id=org.id, action=action)))


def _invitation(org, inviter, email=None, role="developer"):
    issued = invitations.create_invitation(
        org, role=role, email=email, ttl=timedelta(days=7), actor=inviter, actor_membership=_membership(org, inviter)
    )
    return issued


def _fresh(model, row_id):
    db.session.expire_all()
    return db.session.get(model, row_id)


# Confirmation pages ---------------------------------------------------------------------------------------


def test_remove_page_says_what_happens_and_changes_nothing(client, auth, org, owner, member):
    key = factories.api_key(org, member, name="Nightly export")
    _invitation(org, owner)
    auth.login(owner)
    target = _membership(org, member)
    response = client.get(f"/orgs/{org.slug}/members/{target.id}/remove")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert f"Remove {member.display_name} from {org.name}?" in page
    assert "Nightly export" in page and key.api_key.hint in page and "keeps working" in page
    assert f'href="/orgs/{org.slug}/offboarding/{member.id}"' in page
    assert f'action="/orgs/{org.slug}/members/{target.id}/remove"' in page and 'name="csrf_token"' in page
    assert "data-confirm" not in page
    assert _membership(org, member) is not None and not _events(org, "member.removed")


def test_leave_page_for_any_member_and_leaving_works_without_script(client, auth, org, owner):
    viewer = factories.member(org, "viewer")
    auth.login(viewer)
    members = client.get(f"/orgs/{org.slug}/members").get_data(as_text=True)
    mine = _membership(org, viewer)
    assert f'href="/orgs/{org.slug}/members/{mine.id}/remove"' in members and "data-confirm" not in members
    page = client.get(f"/orgs/{org.slug}/members/{mine.id}/remove").get_data(as_text=True)
    assert f"Leave {org.name}?" in page and "no working key here" in page
    response = client.post(f"/orgs/{org.slug}/members/{mine.id}/remove")
    assert response.status_code == 302 and _membership(org, viewer) is None


def test_last_owner_page_explains_and_offers_no_button(client, auth, org, owner):
    auth.login(owner)
    mine = _membership(org, owner)
    page = client.get(f"/orgs/{org.slug}/members/{mine.id}/remove").get_data(as_text=True)
    assert "the last owner" in page and '/remove"' not in page.split('id="last-owner"', 1)[1]


def test_invitation_revoke_page_then_post(client, auth, org, owner):
    issued = _invitation(org, owner, email="pat@example.com")
    auth.login(owner)
    members = client.get(f"/orgs/{org.slug}/members").get_data(as_text=True)
    url = f"/orgs/{org.slug}/invitations/{issued.invitation.id}/revoke"
    assert f'href="{url}"' in members and "data-confirm" not in members
    page = client.get(url)
    assert page.status_code == 200
    body = page.get_data(as_text=True)
    assert "pat@example.com" in body and "stops working" in body and f'action="{url}"' in body
    assert _fresh(Invitation, issued.invitation.id).revoked_at is None
    assert client.post(url).status_code == 302
    assert _fresh(Invitation, issued.invitation.id).revoked_at is not None
    again = client.get(url)
    assert again.status_code == 409 and "nothing to revoke" in again.get_data(as_text=True)


def test_roles_get_the_right_403s(client, auth, org, owner, member):
    admin = factories.member(org, "admin")
    viewer = factories.member(org, "viewer")
    invite = _invitation(org, owner).invitation
    owner_invite = _invitation(org, owner, role="owner").invitation
    others = _membership(org, member).id
    for user in (viewer, member):  # no members.manage: neither someone else's removal nor invitations
        auth.login(user)
        assert (
            client.get(
                f"/orgs/{org.slug}/members/{others if user is viewer else _membership(org, viewer).id}/remove"
            ).status_code
            == 403
        )
        assert client.get(f"/orgs/{org.slug}/invitations/{invite.id}/revoke").status_code == 403
        assert client.get(f"/orgs/{org.slug}/delete").status_code == 403
        auth.logout()
    auth.login(admin)  # an admin manages members, but not owners, owner invitations or the organization itself
    assert client.get(f"/orgs/{org.slug}/members/{others}/remove").status_code == 200
    assert client.get(f"/orgs/{org.slug}/members/{_membership(org, owner).id}/remove").status_code == 403
    assert client.post(f"/orgs/{org.slug}/members/{_membership(org, owner).id}/remove").status_code == 403
    assert client.get(f"/orgs/{org.slug}/invitations/{owner_invite.id}/revoke").status_code == 403
    assert client.get(f"/orgs/{org.slug}/delete").status_code == 403
    assert client.post(f"/orgs/{org.slug}/delete", data={"confirmation": org.name}).status_code == 403
    assert _fresh(Organization, org.id).deleted_at is None and _membership(org, owner) is not None


def test_another_organizations_ids_are_404(client, auth, org, owner):
    other = factories.org()
    stranger = factories.member(other, "owner")
    foreign_member = _membership(other, factories.member(other, "viewer"))
    foreign_invite = _invitation(other, stranger).invitation
    auth.login(owner)
    for method in (client.get, client.post):
        assert method(f"/orgs/{org.slug}/members/{foreign_member.id}/remove").status_code == 404
        assert method(f"/orgs/{org.slug}/invitations/{foreign_invite.id}/revoke").status_code == 404
        assert method(f"/orgs/{org.slug}/members/not-a-uuid/remove").status_code == 404
        assert method(f"/orgs/{other.slug}/delete").status_code == 404
    assert _fresh(Membership, foreign_member.id) is not None


def test_confirmations_need_the_csrf_token(csrf_app, org, owner, member):
    client = csrf_app.test_client()
    page = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)
    client.post("/login", data={"email": owner.email, "password": factories.PASSWORD, "csrf_token": token})
    target = _membership(org, member)
    invite = _invitation(org, owner).invitation
    assert client.post(f"/orgs/{org.slug}/members/{target.id}/remove").status_code == 400
    assert client.post(f"/orgs/{org.slug}/invitations/{invite.id}/revoke").status_code == 400
    assert client.post(f"/orgs/{org.slug}/delete", data={"confirmation": org.name}).status_code == 400
    assert _membership(org, member) is not None and _fresh(Invitation, invite.id).revoked_at is None
    assert _fresh(Organization, org.id).deleted_at is None
    page = client.get(f"/orgs/{org.slug}/members/{target.id}/remove").get_data(as_text=True)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)
    assert client.post(f"/orgs/{org.slug}/members/{target.id}/remove", data={"csrf_token": token}).status_code == 302
    assert _membership(org, member) is None


def test_settings_has_a_danger_zone(client, auth, org, owner):
    auth.login(owner)
    page = client.get(f"/orgs/{org.slug}/settings").get_data(as_text=True)
    zone = page.split('id="danger-zone"', 1)[1]
    assert f'href="/orgs/{org.slug}/delete"' in zone
    assert f'href="/orgs/{org.slug}/members/{_membership(org, owner).id}/remove"' in zone


# A former member's open tab -------------------------------------------------------------------------------


def test_removed_members_next_request_explains(client, auth, org, owner, member):
    key = factories.api_key(org, member).api_key
    mine = _membership(org, member)
    services.remove_member(org, mine, actor=owner, actor_membership=_membership(org, owner))
    auth.login(member)  # the tab that was open: same account, its organization now gone from under it
    for response in (
        client.get(f"/orgs/{org.slug}/keys/"),
        client.get(f"/orgs/{org.slug}/keys/{key.id}"),
        client.post(f"/orgs/{org.slug}/keys/{key.id}/revoke"),
    ):
        assert response.status_code == 403
        page = response.get_data(as_text=True)
        assert f"You were removed from {org.name}" in page and owner.display_name in page
    assert _fresh(ApiKey, key.id).revoked_at is None


def test_someone_who_never_was_a_member_still_gets_404(client, auth, org, owner):
    auth.login(factories.user())
    response = client.get(f"/orgs/{org.slug}/keys/")
    assert response.status_code == 404 and org.name not in response.get_data(as_text=True)


def test_who_left_is_told_they_left(client, auth, org, owner, member):
    auth.login(member)
    client.post(f"/orgs/{org.slug}/members/{_membership(org, member).id}/remove")
    response = client.get(f"/orgs/{org.slug}/usage")
    assert response.status_code == 403 and f"You left {org.name}" in response.get_data(as_text=True)


# Deleting an organization ---------------------------------------------------------------------------------


def test_delete_page_shows_what_ends_and_changes_nothing(client, auth, org, owner, member):
    factories.api_key(org, owner, environment="live")
    factories.api_key(org, member)
    _invitation(org, owner)
    auth.login(owner)
    response = client.get(f"/orgs/{org.slug}/delete")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert "1 live key and 1 test key" in page and "2 members" in page and "1 pending invite link" in page
    assert 'name="confirmation"' in page and "data-confirm" not in page
    assert _fresh(Organization, org.id).deleted_at is None


@pytest.mark.parametrize("typed", ["", "Something else", "org"])
def test_delete_needs_the_name_typed(client, auth, org, owner, typed):
    key = factories.api_key(org, owner)
    auth.login(owner)
    response = client.post(f"/orgs/{org.slug}/delete", data={"confirmation": typed})
    assert response.status_code == 422
    assert _fresh(Organization, org.id).deleted_at is None
    assert verify(client, key.plaintext).status_code == 200


def test_delete_revokes_every_key_removes_everyone_and_is_audited(client, auth, org, owner, member):
    live = factories.api_key(org, owner, environment="live", name="Checkout")
    test = factories.api_key(org, member, name="CI")
    rolled = factories.api_key(org, owner, name="Web")
    key_services.roll_key(org, rolled.api_key, timedelta(days=1), owner)  # the old key is still in its grace
    invite = _invitation(org, owner, email="soon@example.com")
    auth.login(owner)
    response = client.post(f"/orgs/{org.slug}/delete", data={"confirmation": f"  {org.name.upper()} "})
    assert response.status_code == 302 and response.headers["Location"] == "/"
    for issued in (live, test, rolled):
        assert verify(client, issued.plaintext).get_json()["code"] == "revoked"
    unrevoked = db.session.scalars(sa.select(ApiKey).filter_by(organization_id=org.id, revoked_at=None)).all()
    assert unrevoked == []
    assert _fresh(Organization, org.id).deleted_at is not None
    assert db.session.scalars(sa.select(Membership).filter_by(organization_id=org.id)).all() == []
    assert _fresh(Invitation, invite.invitation.id).revoked_at is not None
    [deleted] = _events(org, "org.deleted")
    assert deleted.actor_id == owner.id and deleted.details["keys_revoked"] == 4 and deleted.details["members"] == 2
    assert len(_events(org, "key.revoked")) == 4
    assert {e.details["email"] for e in _events(org, "member.removed")} == {owner.email, member.email}
    # Both land where they belong and the old address explains itself.
    assert "is deleted" in client.get("/", follow_redirects=True).get_data(as_text=True)
    gone = client.get(f"/orgs/{org.slug}/keys/")
    assert gone.status_code == 410 and f"{org.name} was deleted" in gone.get_data(as_text=True)
    # The invite link no longer works.
    assert client.get(f"/invite/{invite.token}").status_code == 410


def test_a_deleted_organization_by_its_slug(client, auth, org, owner, staff):
    services_org_slug = org.slug
    auth.login(owner)
    client.post(f"/orgs/{org.slug}/delete", data={"confirmation": org.slug})
    auth.logout()
    auth.login(factories.user())  # a stranger: as absent as any other organization
    for path in ("/keys/", "/members", "/audit", "/settings", "/delete", "/usage"):
        assert client.get(f"/orgs/{services_org_slug}{path}").status_code == 404
    auth.logout()
    auth.login(staff)  # staff still see it, marked deleted, with who did it, and cannot change it
    found = client.get(f"/staff/?q={org.slug}").get_data(as_text=True)
    assert org.name in found and "deleted" in found
    detail = client.get(f"/staff/orgs/{org.slug}")
    assert detail.status_code == 200
    page = detail.get_data(as_text=True)
    assert "Deleted on" in page and owner.display_name in page and "Organization deleted" in page
    assert client.post(f"/staff/orgs/{org.slug}/plan", data={"plan": "pro", "reason": "x"}).status_code == 409
    assert client.post(f"/staff/orgs/{org.slug}/quota", data={"calls": 10, "reason": "x"}).status_code == 409
    assert client.get(f"/staff/orgs/{org.slug}/usage").status_code == 200
    # Its slug is never handed out again.
    assert services.unique_slug(org.slug) != org.slug


# Where signing in lands -----------------------------------------------------------------------------------


def test_sign_in_lands_on_the_organization_used_last(client, auth, owner, org):
    second = factories.org("Zeta")
    factories.member(second, "viewer", owner)
    auth.login(owner)
    client.get(f"/orgs/{second.slug}/members")
    auth.logout()
    response = auth.login(owner)
    assert response.headers["Location"] == "/"
    assert client.get("/").headers["Location"] == f"/orgs/{second.slug}/keys/"
    assert _fresh(User, owner.id).last_organization_id == second.id


def test_staff_land_on_the_staff_area(client, auth, staff):
    response = auth.login(staff)
    assert response.headers["Location"] == "/staff/"


# Invite sign-up -------------------------------------------------------------------------------------------


def test_invite_signup_is_prefilled_and_makes_no_organization(client, org, owner):
    issued = _invitation(org, owner, email="new.hire@example.com")
    path = f"/invite/{issued.token}"
    page = client.get(f"/signup?next={path}").get_data(as_text=True)
    assert 'value="new.hire@example.com"' in page and f"join <strong>{org.name}</strong>" in page
    data = {"display_name": "New Hire", "email": "new.hire@example.com", "password": "a long enough password"}
    assert client.post(f"/signup?next={path}", data=data).status_code == 302
    user = db.session.scalar(sa.select(User).filter_by(email="new.hire@example.com"))
    assert db.session.scalars(sa.select(Membership).filter_by(user_id=user.id)).all() == []


def test_signup_with_another_address_than_invited_gets_its_own_organization(client, org, owner):
    issued = _invitation(org, owner, email="invited@example.com")
    data = {"display_name": "Other", "email": "other@example.com", "password": "a long enough password"}
    client.post(f"/signup?next=/invite/{issued.token}", data=data)
    user = db.session.scalar(sa.select(User).filter_by(email="other@example.com"))
    assert len(db.session.scalars(sa.select(Membership).filter_by(user_id=user.id)).all()) == 1


# Slugs ----------------------------------------------------------------------------------------------------


def test_same_names_get_numbered_slugs_and_the_switcher_shows_them(client, auth):
    user = factories.user()
    auth.login(user)
    for _ in range(3):
        client.post("/orgs/new", data={"name": "Acme Labs"})
    slugs = db.session.scalars(sa.select(Organization.slug).where(Organization.name == "Acme Labs")).all()
    assert sorted(slugs) == ["acme-labs", "acme-labs-2", "acme-labs-3"]
    page = client.get("/orgs/acme-labs-2/keys/").get_data(as_text=True)
    switcher = page.split('class="org-switcher"', 1)[1].split("</details>", 1)[0]
    assert all(slug in switcher for slug in slugs)


def test_no_key_is_created_or_rolled_once_the_organization_is_deleted(org, owner):
    """What a request that waited on the organization's lock while the deletion committed finds after it."""
    from portal.timeutil import utcnow

    existing = factories.api_key(org, owner).api_key
    org.deleted_at = utcnow()
    db.session.commit()
    with pytest.raises(key_services.KeyActionError, match="deleted"):
        key_services.create_key(org, name="late", environment="test", actor=owner)
    with pytest.raises(key_services.KeyActionError, match="deleted"):
        key_services.roll_key(org, existing, timedelta(hours=1), owner)
    assert (
        db.session.scalar(sa.select(sa.func.count()).select_from(ApiKey).where(ApiKey.organization_id == org.id)) == 1
    )
