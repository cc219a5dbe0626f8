"""The browser checks (axe-core, phone width) visit every page: a new GET route must join the catalogue in
tests/browser/pages.py or be excluded there with a reason."""

from __future__ import annotations

from tests.browser.pages import EXCLUDED, VISITS


def test_every_get_route_is_visited_or_excluded_with_a_reason(app):
    routes = {rule.endpoint for rule in app.url_map.iter_rules() if "GET" in (rule.methods or ())}
    visited = {visit.endpoint for visit in VISITS if visit.endpoint}
    assert sorted(routes - visited - set(EXCLUDED)) == []
    assert all(reason.strip() for reason in EXCLUDED.values())
    assert sorted((visited | set(EXCLUDED)) - routes) == []  # nothing listed that no longer exists


def test_each_person_sees_pages_in_every_state():
    who = {visit.who for visit in VISITS}
    assert {"anonymous", "member", "admin", "staff"} <= who
    statuses = {visit.status for visit in VISITS}
    assert {200, 403, 404, 422} <= statuses  # signed in, refused, missing, a form sent back with errors
