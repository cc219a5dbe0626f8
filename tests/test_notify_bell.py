"""The bell in the header: how many of the organization's events a member has not seen, reset by opening the
events page; and that page's filter, links and times."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
import sqlalchemy as sa

from portal.extensions import db
from portal.keys import services as key_services
from portal.models import Membership
from portal.notify import bell, events
from portal.orgs import services as org_services
from portal.timeutil import utcnow
from tests import factories

BELL = re.compile(r'<a class="bell[^"]*" href="([^"]+)" aria-label="([^"]+)"[^>]*>(.*?)</a>', re.S)


def bells(html: str) -> list[tuple[str, str, str]]:
    """Each bell drawn on the page: (link, accessible name, visible badge or "")."""
    found = []
    for href, label, inner in BELL.findall(html):
        badge = re.search(r'<span class="bell-count" aria-hidden="true">([^<]+)</span>', inner)
        found.append((href, label, badge.group(1) if badge else ""))
    return found


def the_bell(client, path: str) -> tuple[str, str, str]:
    response = client.get(path)
    assert response.status_code == 200
    drawn = bells(response.get_data(as_text=True))
    assert len(drawn) == 2 and drawn[0] == drawn[1]  # one for wide screens, one beside the phone menu
    return drawn[0]


def joined(org, n: int) -> None:
    """``n`` events, the way the portal records them (member.joined is mailed to nobody by default)."""
    for i in range(n):
        events.emit(org, "member.joined", {"member": {"email": f"m{i}@example.com", "name": f"M {i}"}})
    db.session.commit()


def test_the_bell_counts_new_events_and_opening_the_events_page_resets_it(client, auth, org, owner):
    for name in ("Checkout", "Search", "Billing"):
        factories.api_key(org, owner, name=name)
    auth.login(owner)
    href, label, badge = the_bell(client, f"/orgs/{org.slug}/keys/")
    assert href == f"/orgs/{org.slug}/events"
    assert (label, badge) == ("Events: 3 new", "3")

    page = client.get(href).get_data(as_text=True)
    assert page.count('class="badge badge-new"') == 3
    assert the_bell(client, f"/orgs/{org.slug}/usage")[1:] == ("Events: nothing new", "")
    assert 'class="badge badge-new"' not in client.get(href).get_data(as_text=True)  # seen now

    factories.api_key(org, owner, name="Later")
    assert the_bell(client, f"/orgs/{org.slug}/members")[1:] == ("Events: 1 new", "1")


def test_the_badge_stops_at_99_plus(client, auth, org, owner):
    joined(org, 120)
    auth.login(owner)
    assert the_bell(client, f"/orgs/{org.slug}/keys/")[1:] == ("Events: more than 99 new", "99+")
    joined_99 = factories.org()
    factories.member(joined_99, "owner", owner)
    joined(joined_99, 99)
    assert the_bell(client, f"/orgs/{joined_99.slug}/keys/")[1:] == ("Events: 99 new", "99")


def test_each_member_has_their_own_marker(client, auth, org, owner):
    colleague = factories.member(org, "viewer")
    joined(org, 2)
    auth.login(owner)
    client.get(f"/orgs/{org.slug}/events")
    auth.logout()
    auth.login(colleague)
    assert the_bell(client, f"/orgs/{org.slug}/keys/")[1:] == ("Events: 2 new", "2")


def test_no_bell_outside_an_organization_or_for_someone_else_s(client, auth, org, owner):
    joined(org, 2)
    stranger = factories.user()
    own = factories.org()
    factories.member(own, "owner", stranger)
    auth.login(stranger)
    response = client.get(f"/orgs/{org.slug}/keys/")
    assert response.status_code == 404 and bells(response.get_data(as_text=True)) == []
    assert the_bell(client, f"/orgs/{own.slug}/keys/")[1:] == ("Events: nothing new", "")  # not org's events
    for page in ("/account", "/account/security", "/docs/api"):
        response = client.get(page, follow_redirects=True)
        assert response.status_code == 200 and bells(response.get_data(as_text=True)) == [], page


def test_the_badge_is_one_query_per_page_and_none_outside_organizations(app, client, auth, org, owner):
    joined(org, 3)
    auth.login(owner)
    statements: list[str] = []

    def remember(conn, cursor, statement, *args):
        if "notification_events" in statement:
            statements.append(statement)

    sa.event.listen(db.engine, "before_cursor_execute", remember)
    try:
        client.get(f"/orgs/{org.slug}/members")
        assert len(statements) == 1  # the header is drawn twice, counted once
        statements.clear()
        client.get("/account")
        assert statements == []
    finally:
        sa.event.remove(db.engine, "before_cursor_execute", remember)


def test_a_filtered_or_later_page_does_not_mark_events_seen(client, auth, org, owner):
    factories.api_key(org, owner, name="Checkout")
    joined(org, 1)
    auth.login(owner)
    page = client.get(f"/orgs/{org.slug}/events?type=key.created").get_data(as_text=True)
    assert "Checkout" in page and "M 0" not in page
    assert client.get(f"/orgs/{org.slug}/events?page=2").status_code == 200
    assert the_bell(client, f"/orgs/{org.slug}/keys/")[1:] == ("Events: 2 new", "2")


def test_an_unknown_event_type_shows_every_event_with_a_message(client, auth, org, owner):
    joined(org, 1)
    auth.login(owner)
    response = client.get(f"/orgs/{org.slug}/events?type=nope.nothing")
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "There is no event type “nope.nothing”" in page and "M 0" in page


def test_the_marker_only_moves_forward(org, owner):
    membership = org_services.membership_of(org.id, owner)
    later, earlier = utcnow(), utcnow() - timedelta(hours=1)
    bell.mark_seen(membership, later)
    bell.mark_seen(membership, earlier)
    assert db.session.scalar(sa.select(Membership.events_seen_at).where(Membership.id == membership.id)) == later


def test_events_link_to_their_key_and_person_with_exact_and_relative_times(client, auth, org, owner):
    issued = factories.api_key(org, owner, name="Checkout")
    key_services.revoke_key(org, issued.api_key, owner)
    departing = factories.member(org, "developer", factories.user(name="Dee Parting"))
    factories.api_key(org, departing, name="Theirs")  # still works after they leave: their person page says so
    target = org_services.membership_of(org.id, departing)
    org_services.remove_member(org, target, actor=owner, actor_membership=org_services.membership_of(org.id, owner))
    auth.login(owner)
    page = client.get(f"/orgs/{org.slug}/events").get_data(as_text=True)
    key_link = f'<a href="/orgs/{org.slug}/keys/{issued.api_key.id}">Checkout ({issued.api_key.hint})</a>'
    assert page.count(key_link) == 2  # created, then revoked
    assert f"The test key “Checkout” ({issued.api_key.hint}) was revoked" in page  # its name and hint as they are
    assert f'<a href="/orgs/{org.slug}/offboarding/{departing.id}">Dee Parting</a>' in page
    assert "just now" in page and re.search(r"<time datetime=\"[^\"]+\">\d{4}-\d\d-\d\d \d\d:\d\d UTC</time>", page)


@pytest.mark.parametrize(
    ("role", "linked"),
    [("owner", True), ("viewer", False)],
)
def test_a_member_event_links_to_the_person_page_for_those_who_manage_members(client, auth, org, owner, role, linked):
    reader = owner if role == "owner" else factories.member(org, role)
    newcomer = factories.user(name="Nia Newcomer")
    factories.api_key(org, newcomer, name="Hers")  # key made before she is a member: tie to this organization
    factories.member(org, "developer", newcomer)
    events.emit(
        org,
        "member.joined",
        {"member": {"user_id": str(newcomer.id), "email": newcomer.email, "name": "Nia Newcomer"}},
    )
    db.session.commit()
    auth.login(reader)
    page = client.get(f"/orgs/{org.slug}/events").get_data(as_text=True)
    link = f'<a href="/orgs/{org.slug}/offboarding/{newcomer.id}">Nia Newcomer</a>'
    assert (link in page) is linked


@pytest.mark.parametrize(
    ("age", "said"),
    [
        (timedelta(seconds=59), "just now"),
        (timedelta(minutes=1), "1 minute ago"),
        (timedelta(minutes=59), "59 minutes ago"),
        (timedelta(hours=2, minutes=59), "2 hours ago"),
        (timedelta(days=1), "1 day ago"),
        (timedelta(days=44), "44 days ago"),
        (timedelta(days=61), "2 months ago"),
        (timedelta(days=800), "2 years ago"),
    ],
)
def test_relative_times_read_in_the_largest_whole_unit(age, said):
    from portal.templating import time_ago

    now = utcnow()
    assert time_ago(now - age, now) == said
