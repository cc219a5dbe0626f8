"""Off-boarding: removing a member (or leaving) shows the keys they created that still work, to revoke or roll."""

from __future__ import annotations

import re
from datetime import timedelta

import sqlalchemy as sa

from portal.extensions import db
from portal.keys import services as key_services
from portal.models import ApiKey, AuditEvent, Membership
from tests import factories
from tests.api_helpers import verify


def _membership(org, user):
    return db.session.scalar(sa.select(Membership).filter_by(organization_id=org.id, user_id=user.id))


def _revocations(org):
    return list(db.session.scalars(sa.select(AuditEvent).filter_by(organization_id=org.id, action="key.revoked")))


def _page(client, org, user):
    return client.get(f"/orgs/{org.slug}/offboarding/{user.id}")


def _form_fields(html: str, action: str) -> dict[str, list[str]]:
    """The hidden fields of the page's form posting to ``action``, as a browser would send them."""
    form = re.search(rf'<form method="post" action="{re.escape(action)}"[^>]*>(.*?)</form>', html, re.S)
    assert form is not None, f"no form posting to {action}"
    fields: dict[str, list[str]] = {}
    for tag in re.findall(r"<input\b[^>]*>", form[1]):
        attributes = dict(re.findall(r'(\w+)="([^"]*)"', tag))
        if attributes.get("type") == "hidden":
            fields.setdefault(attributes["name"], []).append(attributes.get("value", ""))
    return fields


def _revoke_one(client, org, issued):
    """Revoke… on the off-boarding page: the key's confirmation (what will break), then its form."""
    url = f"/orgs/{org.slug}/keys/{issued.api_key.id}/revoke"
    assert client.get(url).status_code == 200
    return client.post(url)


def _revoke_all(client, org, user):
    """The off-boarding page's "Revoke all N keys…", then "Revoke N keys" on the confirmation it leads to."""
    fields = _form_fields(_page(client, org, user).get_data(as_text=True), f"/orgs/{org.slug}/keys/revoke-selected")
    confirmation = client.post(f"/orgs/{org.slug}/keys/revoke-selected", data=fields)
    assert confirmation.status_code == 200
    action = f"/orgs/{org.slug}/keys/revoke-selected/confirm"
    return client.post(action, data=_form_fields(confirmation.get_data(as_text=True), action))


def test_the_confirmation_page_lists_the_members_working_keys_only(client, auth, org, owner, member):
    working = factories.api_key(org, member, name="Worker key")
    dead = factories.api_key(org, member, name="Dead key")
    key_services.revoke_key(org, dead.api_key, owner)
    factories.api_key(org, owner, name="Owner key")
    auth.login(owner)
    members_page = client.get(f"/orgs/{org.slug}/members").get_data(as_text=True)
    confirm = f"/orgs/{org.slug}/members/{_membership(org, member).id}/remove"
    assert confirm in members_page  # "Remove…" asks first, on a page that links to the off-boarding
    assert f"/orgs/{org.slug}/offboarding/{member.id}" in client.get(confirm).get_data(as_text=True)

    page = _page(client, org, member).get_data(as_text=True)

    assert "Worker key" in page and working.api_key.hint in page
    assert "Dead key" not in page and "Owner key" not in page
    assert f"/keys/{working.api_key.id}/revoke" in page  # its confirmation page, with what will break
    assert "/keys/revoke-selected" in page and "data-confirm" not in page  # all at once: confirmed on a page too
    assert f"/keys/{working.api_key.id}/roll" in page and "Revoke all 1 key" in page
    assert f"/members/{_membership(org, member).id}/remove" in page  # the removal itself, after the keys


def test_revoke_one_key_from_the_page_is_audited_and_takes_effect(client, auth, org, owner, member):
    first = factories.api_key(org, member, name="First")
    second = factories.api_key(org, member, name="Second")
    auth.login(owner)
    assert f"/keys/{first.api_key.id}/revoke" in _page(client, org, member).get_data(as_text=True)
    assert _revoke_one(client, org, first).status_code == 302
    assert verify(client, first.plaintext).get_json()["code"] == "revoked"
    assert verify(client, second.plaintext).status_code == 200
    [event] = _revocations(org)
    assert event.actor_id == owner.id and event.target_id == str(first.api_key.id)
    page = _page(client, org, member).get_data(as_text=True)
    assert f"/keys/{first.api_key.id}" not in page and f"/keys/{second.api_key.id}" in page  # working keys only


def test_revoke_all_revokes_every_working_key_with_one_event_each(client, auth, org, owner, member):
    keys = [factories.api_key(org, member, name=f"k{i}") for i in range(3)]
    rolled = factories.api_key(org, member, name="rolled")
    key_services.roll_key(org, rolled.api_key, timedelta(days=1), member)  # old one in its grace period
    auth.login(owner)
    response = _revoke_all(client, org, member)
    assert response.status_code == 302 and response.headers["Location"].endswith(f"/offboarding/{member.id}")
    for issued in [*keys, rolled]:
        assert verify(client, issued.plaintext).get_json()["code"] == "revoked"
    # Five keys: three, the rolled one and its replacement (also created by the member).
    assert len(_revocations(org)) == 5
    body = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "5 keys revoked" in body and "no working key" in body
    assert "/keys/revoke-selected" not in body  # nothing left to revoke, so no button


def test_a_bulk_revocation_returns_only_to_this_organizations_pages(client, auth, org, owner, member):
    issued = factories.api_key(org, member)
    auth.login(owner)
    for back, lands in (
        (f"/orgs/{org.slug}/offboarding/{member.id}", f"/orgs/{org.slug}/offboarding/{member.id}"),
        ("https://evil.example/orgs/x/offboarding/y", f"/orgs/{org.slug}/keys/"),
        (f"/orgs/other/offboarding/{member.id}", f"/orgs/{org.slug}/keys/"),
        (f"/orgs/{org.slug}/offboarding/{member.id}/../../settings", f"/orgs/{org.slug}/keys/"),
    ):
        data = {"key": [str(issued.api_key.id)], "back": back}
        response = client.post(f"/orgs/{org.slug}/keys/revoke-selected/confirm", data=data)
        assert response.status_code == 302 and response.headers["Location"].endswith(lands), back


def test_removing_a_member_with_working_keys_leads_to_their_keys(client, auth, org, owner, member):
    issued = factories.api_key(org, member, name="Left behind")
    auth.login(owner)
    response = client.post(f"/orgs/{org.slug}/members/{_membership(org, member).id}/remove")
    assert response.status_code == 302 and response.headers["Location"].endswith(f"/offboarding/{member.id}")
    assert _membership(org, member) is None
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "1 key(s) they created still work" in page and "Left behind" in page
    assert "no longer a member" in page and "/remove" not in page
    _revoke_all(client, org, member)  # the person is gone; the page and its keys are still there
    assert db.session.get(ApiKey, issued.api_key.id).revoked_at is not None


def test_removing_a_member_without_keys_goes_back_to_the_members_page(client, auth, org, owner, member):
    auth.login(owner)
    response = client.post(f"/orgs/{org.slug}/members/{_membership(org, member).id}/remove")
    assert response.headers["Location"].endswith(f"/orgs/{org.slug}/members")


def test_a_member_leaving_sees_and_revokes_their_own_keys(client, auth, org, owner, member):
    issued = factories.api_key(org, member, name="Mine")
    auth.login(member)  # a developer: cannot manage members, may leave and revoke their test keys
    assert "Leave " in client.get(f"/orgs/{org.slug}/members").get_data(as_text=True)
    page = _page(client, org, member).get_data(as_text=True)
    assert "Keys you created that still work" in page and "Mine" in page
    _revoke_one(client, org, issued)
    assert verify(client, issued.plaintext).get_json()["code"] == "revoked"
    response = client.post(f"/orgs/{org.slug}/members/{_membership(org, member).id}/remove")
    assert response.status_code == 302 and _membership(org, member) is None


def test_live_keys_need_an_admin(client, auth, org, owner, member):
    live = factories.api_key(org, owner, name="Live one", environment="live")
    db.session.get(ApiKey, live.api_key.id).created_by_id = member.id
    db.session.commit()
    test = factories.api_key(org, member, name="Test one")
    auth.login(member)
    page = _page(client, org, member).get_data(as_text=True)
    assert "Live one" in page and "an admin or owner can revoke live keys" in page
    assert f"/keys/{live.api_key.id}/revoke" not in page and "Revoke all 1 key" in page  # the test key only
    assert client.post(f"/orgs/{org.slug}/keys/{live.api_key.id}/revoke").status_code == 403
    _revoke_all(client, org, member)
    assert verify(client, test.plaintext).get_json()["code"] == "revoked"
    assert verify(client, live.plaintext).status_code == 200


def test_others_cannot_see_or_act_without_managing_members(client, auth, org, owner, member):
    issued = factories.api_key(org, owner)
    viewer = factories.member(org, "viewer")
    auth.login(viewer)
    assert _page(client, org, owner).status_code == 403
    assert client.post(f"/orgs/{org.slug}/keys/{issued.api_key.id}/revoke").status_code == 403
    assert db.session.get(ApiKey, issued.api_key.id).revoked_at is None


def test_strangers_and_foreign_keys_are_404(client, auth, org, owner, member):
    stranger = factories.member(factories.org(), "owner")
    other_key = factories.api_key(org, owner)  # created by the owner, not by the member
    auth.login(owner)
    assert _page(client, org, stranger).status_code == 404
    assert client.get(f"/orgs/{org.slug}/offboarding/not-a-uuid").status_code == 404
    assert other_key.api_key.name not in _page(client, org, member).get_data(as_text=True)  # not the member's


def test_the_new_state_changes_need_the_csrf_token(csrf_app, org, owner, member):
    issued = factories.api_key(org, member)
    rolled = factories.api_key(org, owner, name="rolled")
    key_services.roll_key(org, rolled.api_key, timedelta(hours=1), owner)
    client = csrf_app.test_client()
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', client.get("/login").get_data(as_text=True))[1]
    client.post("/login", data={"email": owner.email, "password": factories.PASSWORD, "csrf_token": token})
    for url, data in (
        (f"/orgs/{org.slug}/keys/revoke-selected/confirm", {"key": str(issued.api_key.id)}),
        (f"/orgs/{org.slug}/keys/{issued.api_key.id}/revoke", {}),
        (f"/orgs/{org.slug}/keys/{rolled.api_key.id}/grace", {"extend_hours": "1"}),
        (f"/orgs/{org.slug}/settings/leak-response", {"action": "revoke"}),
    ):
        assert client.post(url, data=data).status_code in (302, 400), url
    assert db.session.get(ApiKey, issued.api_key.id).revoked_at is None
    # The off-boarding page's own form, with its token, goes through (to its confirmation, then the revocation).
    page = client.get(f"/orgs/{org.slug}/offboarding/{member.id}").get_data(as_text=True)
    response = _revoke_all(client, org, member)  # the hidden fields carry the page's token
    assert response.status_code == 302 and db.session.get(ApiKey, issued.api_key.id).revoked_at is not None
    assert "csrf_token" in _form_fields(page, f"/orgs/{org.slug}/keys/revoke-selected")


def test_the_last_owner_is_told_to_name_another_owner_instead_of_offered_to_leave(client, auth, org, owner, member):
    auth.login(owner)
    page = _page(client, org, owner).get_data(as_text=True)
    assert 'id="last-owner"' in page and "Make another member an owner first" in page
    remove_url = f"/orgs/{org.slug}/members/{_membership(org, owner).id}/remove"
    assert remove_url not in page  # no leave button to press
    refused = client.post(f"/orgs/{org.slug}/members/{_membership(org, owner).id}/remove", follow_redirects=True)
    assert "last owner cannot be removed" in refused.get_data(as_text=True) and _membership(org, owner) is not None

    second = factories.member(org, "owner")
    page = _page(client, org, owner).get_data(as_text=True)  # with a second owner, leaving is offered
    assert second is not None and 'id="last-owner"' not in page and remove_url in page
