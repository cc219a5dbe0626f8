"""Every page a visitor, a member, an admin and staff can reach (tests/browser/pages.py), in real Chromium:
no axe-core violation at desktop width, and nothing wider than a 390-pixel phone."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyotp
import pytest
from axe_playwright_python.sync_playwright import Axe
from flask import url_for

from tests.browser.pages import VISITS, Seed, Visit, seed, seed_app
from tests.factories import PASSWORD

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}


@pytest.fixture(scope="module")
def seeded(live_database: str) -> tuple[Any, Seed]:
    app = seed_app(live_database)
    return app, seed(app)


def _password_step(page: Any, base: str, email: str) -> None:
    page.goto(f"{base}/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_load_state()


@pytest.fixture(scope="module")
def signed_in(browser: Any, live_server: str, seeded: tuple[Any, Seed]) -> Iterator[dict[str, Any]]:
    """A browser state per person (cookies of a finished sign-in), signed in once for the whole module."""
    _, data = seeded
    states: dict[str, Any] = {"anonymous": None}
    for who, email in data.emails.items():
        context = browser.new_context()
        page = context.new_page()
        _password_step(page, live_server, email)
        if who == "staff":
            assert "/login/two-factor" in page.url
            page.locator("input[name=code]").fill(pyotp.TOTP(data.totp_secret).now())
            page.get_by_role("button", name="Verify").click()
            page.wait_for_load_state()
        assert "/login" not in page.url, f"{who} could not sign in: {page.url}"
        states[who] = context.storage_state()
        context.close()
    context = browser.new_context()
    _password_step(context.new_page(), live_server, data.emails["staff"])  # stops at the second step
    states["pending"] = context.storage_state()
    context.close()
    yield states


def _url(app: Any, base: str, data: Seed, visit: Visit) -> str:
    if visit.path:
        return base + visit.path
    with app.test_request_context():
        return base + url_for(visit.endpoint, **data.args(visit))


def _open(browser: Any, states: dict[str, Any], url: str, visit: Visit, viewport: dict[str, int]) -> tuple[Any, Any]:
    """The page as ``visit.who`` sees it, after pressing ``visit.submit`` when given."""
    context = browser.new_context(viewport=viewport, storage_state=states[visit.who])
    page = context.new_page()
    response = page.goto(url)
    if visit.submit:
        with page.expect_navigation():
            page.get_by_role("main").get_by_role("button", name=visit.submit).click()
        response = None
    return context, (page, response)


def _each_page(
    browser: Any, live_server: str, seeded: tuple[Any, Seed], states: dict[str, Any], viewport: dict[str, int]
) -> Iterator[tuple[Visit, Any, str | None]]:
    """Each visit's page, open until the caller moves on, with a note when it answered an unexpected status."""
    app, data = seeded
    for visit in VISITS:
        context, (page, response) = _open(browser, states, _url(app, live_server, data, visit), visit, viewport)
        try:
            status = response.status if response is not None else visit.status
            yield visit, page, (None if status == visit.status else f"{visit.name}: answered {status}")
        finally:
            context.close()


def test_no_page_has_an_accessibility_violation(browser, live_server, seeded, signed_in):
    axe = Axe()
    found = []
    for visit, page, wrong_status in _each_page(browser, live_server, seeded, signed_in, DESKTOP):
        found += [wrong_status] if wrong_status else []
        autofocus = page.locator("[autofocus]").count()
        if autofocus > 1:
            found.append(f"{visit.name}: {autofocus} fields ask for the focus (autofocus)")
        results = axe.run(page)
        for violation in results.response["violations"]:
            targets = [" ".join(node["target"]) for node in violation["nodes"]][:3]
            found.append(f"{visit.name}: {violation['id']} ({violation['help']}) at {targets}")
    assert not found, "\n".join(found)


def test_no_page_is_wider_than_a_phone(browser, live_server, seeded, signed_in):
    too_wide = []
    for visit, page, wrong_status in _each_page(browser, live_server, seeded, signed_in, PHONE):
        too_wide += [wrong_status] if wrong_status else []
        width = page.evaluate("document.documentElement.scrollWidth")
        if width > PHONE["width"]:
            culprits = page.evaluate(
                """(limit) => [...document.querySelectorAll('body *')]
                    .filter(e => e.getBoundingClientRect().right > limit + 1)
                    .slice(-3).map(e => e.tagName.toLowerCase() + (e.className ? '.' + e.className : ''))""",
                PHONE["width"],
            )
            too_wide.append(f"{visit.name}: {width} px wide, widest {culprits}")
    assert not too_wide, "\n".join(too_wide)
