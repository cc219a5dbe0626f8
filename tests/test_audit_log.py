"""The audit log reads like a record people can search: targets by name and hint, filters, pages."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from portal import audit
from portal.extensions import db
from portal.models import Membership
from portal.orgs import audit_queries, invitations, services
from portal.orgs.auditlog import target_names
from tests import factories

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _table(page: str) -> str:
    return page[page.index('<table class="table audit">') : page.index("</table>")]


def _membership(org, user):
    return db.session.scalar(sa.select(Membership).filter_by(organization_id=org.id, user_id=user.id))


@pytest.fixture
def per_page(app):
    before = app.config["AUDIT_PER_PAGE"]
    app.config["AUDIT_PER_PAGE"] = 2
    yield 2
    app.config["AUDIT_PER_PAGE"] = before


def test_targets_read_by_name_and_hint_never_as_ids(client, auth, org, owner, member):
    key = factories.api_key(org, owner, name="Billing sync").api_key
    invitations.create_invitation(
        org,
        role="viewer",
        email="pat@example.com",
        ttl=timedelta(days=1),
        actor=owner,
        actor_membership=_membership(org, owner),
    )
    services.change_role(org, _membership(org, member), "viewer", actor=owner, actor_membership=_membership(org, owner))
    services.remove_member(org, _membership(org, member), actor=owner, actor_membership=_membership(org, owner))
    auth.login(owner)
    table = _table(client.get(f"/orgs/{org.slug}/audit").get_data(as_text=True))
    assert f"Billing sync · {key.hint}" in table
    assert f"{member.display_name} · {member.email}" in table  # the membership is gone; the event still reads
    assert "Invitation for pat@example.com" in table
    assert not UUID.search(table)


def test_a_renamed_key_shows_its_current_name(client, auth, org, owner):
    key = factories.api_key(org, owner, name="Old name").api_key
    from portal.keys import services as key_services

    key_services.rename_key(org, key, "New name", owner)
    auth.login(owner)
    table = _table(client.get(f"/orgs/{org.slug}/audit").get_data(as_text=True))
    assert table.count(f"New name · {key.hint}") == 2  # created and renamed, both under today's name


def test_names_are_read_in_one_query(app, org, owner, member):
    for i in range(5):
        factories.api_key(org, owner, name=f"k{i}")
    services.change_role(org, _membership(org, member), "viewer", actor=owner, actor_membership=_membership(org, owner))
    services.rename_org(org, "Renamed", owner)
    events = audit_queries.audit_events(org, per_page=50).items
    statements = []

    def count(*args, **kwargs):
        statements.append(args[2])

    sa.event.listen(db.engine, "before_cursor_execute", count)
    try:
        names = target_names(events)
    finally:
        sa.event.remove(db.engine, "before_cursor_execute", count)
    assert len(statements) == 1
    assert {kind for kind, _ in names} == {"api_key", "membership", "organization"}


def _event(org, action, actor_label, when):
    event = audit.record(action, organization_id=org.id, actor=None, actor_label=actor_label)
    db.session.flush()
    event.created_at = when
    db.session.commit()
    return event


def test_filters_by_actor_action_and_date_and_pages_keep_them(client, auth, org, owner, per_page):
    day = datetime(2026, 3, 10, 12, tzinfo=UTC)
    for i in range(5):
        _event(org, "plan.changed", "ProCode support", day + timedelta(days=i))
    _event(org, "plan.changed", "CLI", day)
    _event(org, "org.renamed", "ProCode support", day)
    auth.login(owner)
    base = f"/orgs/{org.slug}/audit"
    query = "?actor=ProCode+support&action=plan.changed&since=2026-03-11&until=2026-03-13"
    response = client.get(base + query)
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert "3 events match these filters" in page
    assert page.count("<tr>") - 1 == 2  # header + a page of two
    older = re.search(r'href="([^"]+)" rel="next"', page).group(1).replace("&amp;", "&")
    assert "actor=ProCode+support" in older and "action=plan.changed" in older
    assert "since=2026-03-11" in older and "until=2026-03-13" in older and "page=2" in older
    second = client.get(older).get_data(as_text=True)
    assert "2026-03-11" in _table(second) and "2026-03-13" not in _table(second)
    only_cli = client.get(base + "?actor=CLI").get_data(as_text=True)
    assert "1 event matches" in only_cli
    # The filters are offered as the log's own actors and actions, in words.
    assert '<option value="CLI">CLI</option>' in page and '<option value="org.renamed">Organization renamed' in page


def test_bad_filter_input_is_a_form_error(client, auth, org, owner):
    auth.login(owner)
    base = f"/orgs/{org.slug}/audit"
    response = client.get(base + "?since=yesterday")
    assert response.status_code == 422 and "Not a valid date value" in response.get_data(as_text=True)
    backwards = client.get(base + "?since=2026-03-10&until=2026-03-01")
    assert backwards.status_code == 422 and "before the start date" in backwards.get_data(as_text=True)
    assert client.get(base + "?action=nope").status_code == 422
    assert client.get(base + "?actor=" + "x" * 5000).status_code == 422
