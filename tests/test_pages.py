"""A sweep over every page a signed-in person can open: each renders, is well-formed for our CSP, and has the nav."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from tests import factories


class PageShape(HTMLParser):
    """What the sweep checks in a page: its titles, its scripts and the links in the main navigation."""

    def __init__(self) -> None:
        super().__init__()
        self.titles = 0
        self.scripts: list[dict[str, str | None]] = []
        self.nav_links: list[str] = []
        self._nav_depth = 0
        self._in_link = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "title":
            self.titles += 1
        elif tag == "script":
            self.scripts.append(attributes)
        elif tag == "nav" and (attributes.get("aria-label") == "Main" or self._nav_depth):
            self._nav_depth += 1
        elif tag == "a" and self._nav_depth:
            self._in_link = True
            self.nav_links.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "nav" and self._nav_depth:
            self._nav_depth -= 1
        elif tag == "a":
            self._in_link = False

    def handle_data(self, data: str) -> None:
        if self._in_link:
            self.nav_links[-1] += data.strip()


def _check(response, expected_nav: set[str], absent_nav: set[str] = frozenset()) -> PageShape:
    assert response.status_code == 200, response.request.path
    assert "Content-Security-Policy" in response.headers
    shape = PageShape()
    shape.feed(response.get_data(as_text=True))
    assert shape.titles == 1
    for script in shape.scripts:
        assert script.get("src") or script.get("type") == "application/json", script
    assert expected_nav <= set(shape.nav_links), shape.nav_links
    assert not absent_nav & set(shape.nav_links), shape.nav_links
    return shape


ORG_NAV = {"Keys", "Members", "Audit"}


@pytest.fixture
def owner_pages(client, auth, org, owner):
    key = factories.api_key(org, owner, name="Swept key").api_key
    auth.login(owner)
    invite = client.post(f"/orgs/{org.slug}/invitations", data={"role": "developer", "email": "next@example.com"})
    assert invite.status_code == 200
    base = f"/orgs/{org.slug}"
    return [
        f"{base}/keys/",
        f"{base}/keys/{key.id}",
        f"{base}/keys/new",
        f"{base}/members",
        f"{base}/audit",
        f"{base}/settings",
        f"{base}/usage",
        f"{base}/keys/{key.id}/usage",
        "/account/password",
        "/docs/api",
    ]


def test_every_owner_page(client, owner_pages):
    for path in owner_pages:
        _check(client.get(path), ORG_NAV | {"Settings"}, absent_nav={"Staff"})


def test_members_page_lists_the_pending_invite(client, org, owner_pages):
    assert "next@example.com" in client.get(f"/orgs/{org.slug}/members").get_data(as_text=True)


def test_developer_nav_has_no_settings(client, auth, org, member):
    auth.login(member)
    _check(client.get(f"/orgs/{org.slug}/keys/"), ORG_NAV, absent_nav={"Settings", "Staff"})


def test_every_staff_page(client, auth, org, owner, staff):
    staff_org = factories.org(name="Staff home")
    factories.member(staff_org, "viewer", staff)
    auth.login(staff)
    for path in ("/staff/?q=org", f"/staff/orgs/{org.slug}"):
        _check(client.get(path), ORG_NAV | {"Staff"})
    assert org.name in client.get("/staff/", query_string={"q": org.slug}).get_data(as_text=True)


def test_pages_never_carry_inline_scripts(client, owner_pages):
    for path in owner_pages:
        body = client.get(path).get_data(as_text=True)
        assert not re.search(r"\son(click|load|submit|change)=", body), path
