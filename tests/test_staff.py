from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from portal.extensions import db
from portal.keys import services as key_services
from portal.models import AuditEvent, Organization, OutboxMail
from portal.timeutil import utcnow
from tests import factories


@pytest.fixture
def staff_client(client, auth, staff):
    auth.login(staff)
    return client


def test_staff_area_is_404_for_everyone_else(client, auth, org, owner):
    paths = ["/staff/", f"/staff/orgs/{org.slug}", "/staff/?q=x"]
    plan_change = {"plan": "pro", "reason": "x" * 5}
    for path in paths:  # signed out
        assert client.get(path).status_code == 404
    assert client.post(f"/staff/orgs/{org.slug}/plan", data=plan_change).status_code == 404
    auth.login(owner)  # an owner, but not staff
    for path in paths:
        assert client.get(path).status_code == 404
    assert client.post(f"/staff/orgs/{org.slug}/plan", data=plan_change).status_code == 404
    assert db.session.get(Organization, org.id).plan == "free"
    assert "/staff" not in client.get(f"/orgs/{org.slug}/keys/").get_data(as_text=True)


def test_search_by_name_slug_and_member_email(staff_client, org, owner):
    acme = factories.org("Acme Widgets", plan="pro")
    factories.member(acme, "owner", factories.user("boss@acme-corp.example"))
    factories.member(acme, "viewer")
    factories.api_key(acme)
    factories.org("Unrelated")

    def names(query):
        body = staff_client.get("/staff/", query_string={"q": query}).get_data(as_text=True)
        return {"Acme Widgets" in body, "Unrelated" in body}

    assert names("acme w") == {True, False}
    assert names(acme.slug) == {True, False}
    assert names("BOSS@ACME") == {True, False}
    assert names("nothing-like-this") == {False}
    body = staff_client.get("/staff/", query_string={"q": "acme"}).get_data(as_text=True)
    row = body.split("Acme Widgets", 1)[1].split("</tr>", 1)[0]
    assert "Pro" in row and ">2<" in row and "1 / 1" in row


def test_search_treats_wildcards_literally_and_paginates(staff_client, app):
    factories.org("100% Organic")
    factories.org("Plain")
    assert "Plain" not in staff_client.get("/staff/?q=%25").get_data(as_text=True)
    assert "100% Organic" in staff_client.get("/staff/?q=0%25").get_data(as_text=True)
    per_page = app.config["STAFF_PER_PAGE"]
    for i in range(per_page + 1):
        factories.org(f"Paged {i:02d}")
    first = staff_client.get("/staff/?q=paged").get_data(as_text=True)
    assert "Page 1 of 2" in first and "Paged 00" in first
    second = staff_client.get("/staff/?q=paged&page=2").get_data(as_text=True)
    assert f"Paged {per_page:02d}" in second and "Paged 00" not in second


def test_org_detail_shows_plan_members_counts_events_and_never_a_secret(staff_client, org, owner, member):
    live = factories.api_key(org, owner, environment="live", name="Live one")
    test_keys = [factories.api_key(org, member, name=f"Test {i}") for i in range(3)]
    key_services.revoke_key(org, test_keys[0].api_key, owner)
    key_services.roll_key(org, test_keys[1].api_key, timedelta(hours=1), owner)  # old one expiring, +1 new
    expired = test_keys[2].api_key
    expired.expires_at = datetime.now(UTC) - timedelta(minutes=1)
    db.session.commit()

    response = staff_client.get(f"/staff/orgs/{org.slug}")
    assert response.status_code == 200
    body = response.get_data(as_text=True)
    for text in (org.name, "Free", "60 requests / minute", owner.email, member.email, "developer", "Key created"):
        assert text in body
    counts = body.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    # test: active 1 (the rolled-in key), expiring 1, expired 1, revoked 1; live: active 1
    assert '<th scope="row">test</th><td>1</td><td>1</td><td>1</td><td>1</td><td>4</td>' in counts
    assert '<th scope="row">live</th><td>1</td><td>0</td><td>0</td><td>0</td><td>1</td>' in counts
    for issued in [live, *test_keys]:
        row = issued.api_key
        assert row.key_hash.hex() not in body
        assert issued.plaintext not in body
        assert issued.plaintext[len("pk_test_") : -4] not in body  # not even the secret part without the hint


def test_unknown_org_is_404_for_staff(staff_client):
    assert staff_client.get("/staff/orgs/no-such-org").status_code == 404
    response = staff_client.post("/staff/orgs/no-such-org/plan", data={"plan": "pro", "reason": "upgrade"})
    assert response.status_code == 404


def test_plan_change_needs_a_reason_and_valid_plan(staff_client, org, owner):
    for data in (
        {"plan": "pro", "reason": ""},
        {"plan": "platinum", "reason": "because"},
        {"plan": "free", "reason": "already there"},
        {"plan": "pro", "reason": "x" * 501},
    ):
        response = staff_client.post(f"/staff/orgs/{org.slug}/plan", data=data)
        assert response.status_code == 422
    assert "already on the Free plan" in staff_client.post(
        f"/staff/orgs/{org.slug}/plan", data={"plan": "free", "reason": "noop"}
    ).get_data(as_text=True)
    assert db.session.get(Organization, org.id).plan == "free"
    assert db.session.scalar(sa.select(AuditEvent).filter_by(action="plan.changed")) is None


def test_plan_change_is_audited_and_shown_as_support_on_the_org_audit_page(client, auth, staff, org, owner):
    auth.login(staff)
    change = {"plan": "pro", "reason": "Signed contract #42"}
    response = client.post(f"/staff/orgs/{org.slug}/plan", data=change)
    assert response.status_code == 302
    assert db.session.get(Organization, org.id).plan == "pro"
    [event] = db.session.scalars(sa.select(AuditEvent).filter_by(action="plan.changed"))
    assert event.actor_id == staff.id and event.actor_label == "ProCode support"
    assert event.details == {"from": "free", "to": "pro", "reason": "Signed contract #42"}
    detail = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "now on the Pro plan" in detail and "1,000 requests / minute" in detail
    auth.logout()
    auth.login(owner)
    page = client.get(f"/orgs/{org.slug}/audit").get_data(as_text=True)
    table = page[page.index('<table class="table audit">') :]
    row = table.split("Plan changed", 1)[0].rsplit("<tr>", 1)[1]
    assert "ProCode support" in row and staff.email not in page
    assert "free → pro" in page and "Signed contract #42" in page
    assert "Pro" in client.get(f"/orgs/{org.slug}/settings").get_data(as_text=True)


def test_the_staff_page_links_to_the_mail_outbox_with_the_failed_count(staff_client):
    page = staff_client.get("/staff/").get_data(as_text=True)
    link = re.search(r'<a class="button" href="/staff/mail" id="staff-mail-link">(.*?)</a>', page, re.S)
    assert link and "Outgoing mail" in link.group(1) and "failed" not in link.group(1)
    for _ in range(2):
        db.session.add(
            OutboxMail(
                to_address="x@example.com", subject="S", body_text="b", template="test_message", failed_at=utcnow()
            )
        )
    db.session.add(OutboxMail(to_address="y@example.com", subject="S", body_text="b", template="test_message"))
    db.session.commit()
    page = staff_client.get("/staff/").get_data(as_text=True)
    assert re.search(r'href="/staff/mail" id="staff-mail-link">Outgoing mail <span[^>]*>2 failed</span>', page)
    assert staff_client.get("/staff/mail").status_code == 200
