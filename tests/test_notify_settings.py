"""The notification settings page: owners and admins choose who is mailed about each organization event and
when a key counts as idle; every change is audited; bad input is a form error that writes nothing."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from markupsafe import escape

from portal.extensions import db
from portal.models import AuditEvent, NotificationRule, Organization, OutboxMail
from portal.notify import rules
from portal.notify.catalogue import ACCOUNT_EVENTS, EVENTS
from tests import factories


def _url(org):
    return f"/orgs/{org.slug}/settings/notifications"


def _form(**changes):
    """The settings form as the page sends it with every default kept, then ``changes`` applied."""
    data = {"idle_key_days": ""}
    for event in EVENTS.values():
        key = event.name.replace(".", "_")
        data[f"audience_{key}"] = event.default_audience
        data[f"addresses_{key}"] = ""
    data.update(changes)
    return data


def _rules(org):
    return {r.event_type: r for r in db.session.scalars(sa.select(NotificationRule).filter_by(organization_id=org.id))}


def _audits(org, action="notifications.changed"):
    return list(db.session.scalars(sa.select(AuditEvent).filter_by(organization_id=org.id, action=action)))


@pytest.mark.parametrize("role", ["owner", "admin"])
def test_owners_and_admins_see_every_event_with_its_default(client, auth, org, role):
    auth.login(factories.member(org, role))
    response = client.get(_url(org))
    assert response.status_code == 200
    body = response.get_data(as_text=True)
    for event in EVENTS.values():
        assert escape(event.label) in body and escape(event.description) in body
    for description in ACCOUNT_EVENTS.values():
        assert escape(description) in body  # always mailed to the account's owner
    assert "Owners (default)" in body and "Owners and admins (default)" in body
    assert f'href="/orgs/{org.slug}/webhooks"' in body


@pytest.mark.parametrize("role", ["developer", "viewer"])
def test_developers_and_viewers_get_nothing_of_it(client, auth, org, role):
    auth.login(factories.member(org, role))
    page = client.get(_url(org))
    assert page.status_code == 403
    assert "Key revoked" not in page.get_data(as_text=True)
    assert client.post(_url(org), data=_form(audience_key_revoked="members")).status_code == 403
    assert _rules(org) == {}
    nav = client.get(f"/orgs/{org.slug}/keys/").get_data(as_text=True)
    assert _url(org) not in nav and f"/orgs/{org.slug}/webhooks" not in nav


def test_another_organization_answers_404(client, auth, org, owner):
    auth.login(owner)
    other = factories.org()
    factories.member(other, "owner")
    assert client.get(_url(other)).status_code == 404


def test_saving_stores_only_what_differs_from_the_default_and_audits_it(client, auth, org, owner):
    auth.login(owner)
    response = client.post(
        _url(org),
        data=_form(
            audience_key_created="members",
            addresses_key_revoked="Oncall@Example.com, team@example.com\nteam@example.com",
            idle_key_days="30",
        ),
    )
    assert response.status_code == 302
    stored = _rules(org)
    assert set(stored) == {"key.created", "key.revoked"}
    assert stored["key.created"].audience == "members" and stored["key.created"].addresses == []
    assert stored["key.revoked"].audience == "owners"
    assert stored["key.revoked"].addresses == ["oncall@example.com", "team@example.com"]
    assert db.session.get(Organization, org.id).idle_key_days == 30
    (audit,) = _audits(org)
    changed = audit.details["changed"]
    assert "Key created: mailed to Nobody → All members" in changed
    assert "Key revoked: also mailed to none → oncall@example.com, team@example.com" in changed
    assert "Idle keys reported: off → after 30 days" in changed
    assert audit.actor_id == owner.id

    page = client.get(_url(org)).get_data(as_text=True)
    assert "oncall@example.com\nteam@example.com" in page  # shown back as saved
    assert 'value="30"' in page

    # Back to the defaults: the rows go, the threshold is off again, and that is audited too.
    assert client.post(_url(org), data=_form()).status_code == 302
    assert _rules(org) == {}
    assert db.session.get(Organization, org.id).idle_key_days is None
    assert len(_audits(org)) == 2
    assert "Idle keys reported: after 30 days → off" in _audits(org)[-1].details["changed"]


def test_saving_without_a_change_writes_nothing(client, auth, org, owner):
    auth.login(owner)
    response = client.post(_url(org), data=_form(), follow_redirects=True)
    assert "Nothing changed." in response.get_data(as_text=True)
    assert _audits(org) == [] and _rules(org) == {}


def test_the_audit_page_reads_the_change(client, auth, org, owner):
    auth.login(owner)
    client.post(_url(org), data=_form(audience_member_joined="admins"))
    body = client.get(f"/orgs/{org.slug}/audit").get_data(as_text=True)
    assert "Notification settings changed" in body
    assert "Member joined: mailed to Nobody → Owners and admins" in body


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"addresses_key_revoked": "not-an-address"}, "“not-an-address” is not a mail address"),
        ({"addresses_key_revoked": "ops@example.com, bad@"}, "“bad@” is not a mail address"),
        (
            {"addresses_key_revoked": "\n".join(f"a{n}@example.com" for n in range(11))},
            "List at most 10 addresses (11 given).",
        ),
        ({"addresses_key_revoked": "p\u0430ypal@example.com"}, "mixes letters from different alphabets"),
        ({"idle_key_days": "0"}, "Enter a number of days from 1 to 365"),
        ({"idle_key_days": "366"}, "Enter a number of days from 1 to 365"),
        ({"idle_key_days": "soon"}, "Not a valid integer value."),
        ({"audience_key_revoked": "everyone"}, "Not a valid choice."),
    ],
)
def test_bad_input_is_a_form_error_and_writes_nothing(client, auth, org, owner, changes, error):
    auth.login(owner)
    response = client.post(_url(org), data=_form(audience_key_created="members", **changes))
    assert response.status_code == 422
    body = response.get_data(as_text=True)
    assert error in body
    assert 'aria-invalid="true"' in body  # on the field it is about
    assert _rules(org) == {} and _audits(org) == []
    assert db.session.get(Organization, org.id).idle_key_days is None


def test_the_service_refuses_what_the_form_refuses(org, owner):
    with pytest.raises(rules.SettingsError) as bad_days:
        rules.save(org, {}, 400, owner)
    assert bad_days.value.field == "idle_key_days"
    with pytest.raises(rules.SettingsError, match="Unknown event"):
        rules.save(org, {"key.nope": rules.Choice("owners")}, None, owner)
    with pytest.raises(rules.SettingsError, match="not a mail address"):
        rules.save(org, {"key.revoked": rules.Choice("owners", ("x@",))}, None, owner)
    assert _rules(org) == {} and _audits(org) == []


def test_a_saved_choice_decides_who_is_mailed(client, auth, org, owner):
    developer = factories.member(org, "developer")
    auth.login(owner)
    client.post(_url(org), data=_form(audience_key_created="members", addresses_key_created="list@example.com"))
    factories.api_key(org, None, actor_label="CLI")
    mailed = sorted(m.to_address for m in db.session.scalars(sa.select(OutboxMail)) if "Key created" in m.subject)
    assert mailed == sorted([owner.email, developer.email, "list@example.com"])
    mail = next(m for m in db.session.scalars(sa.select(OutboxMail)) if m.to_address == developer.email)
    assert f"/orgs/{org.slug}/settings/notifications" in mail.body_text
    assert f"/orgs/{org.slug}/settings/notifications" in (mail.body_html or "")


def test_settings_are_linked_from_the_org_settings_and_events_pages(client, auth, org, owner):
    factories.api_key(org, owner)  # an event on the feed
    auth.login(owner)
    for page in (f"/orgs/{org.slug}/settings", f"/orgs/{org.slug}/events", f"/orgs/{org.slug}/keys/"):
        assert f'href="{_url(org)}"' in client.get(page).get_data(as_text=True), page
    admin = factories.member(org, "admin")
    auth.logout()
    auth.login(admin)
    body = client.get(f"/orgs/{org.slug}/events").get_data(as_text=True)
    assert f'href="{_url(org)}"' in body and f'href="/orgs/{org.slug}/webhooks"' in body
    developer = factories.member(org, "developer")
    auth.logout()
    auth.login(developer)
    assert _url(org) not in client.get(f"/orgs/{org.slug}/events").get_data(as_text=True)


def _token(page):
    return page.split('name="csrf_token" type="hidden" value="')[1].split('"')[0]


def test_the_form_needs_its_csrf_token(csrf_app, org, owner):
    client = csrf_app.test_client()
    login = {"email": owner.email, "password": factories.PASSWORD, "csrf_token": _token(client.get("/login").text)}
    assert client.post("/login", data=login).status_code == 302
    assert client.post(_url(org), data=_form(audience_key_created="members")).status_code == 400
    assert _rules(org) == {}
    token = _token(client.get(_url(org)).text)
    assert client.post(_url(org), data=_form(audience_key_created="members", csrf_token=token)).status_code == 302
    assert set(_rules(org)) == {"key.created"}
