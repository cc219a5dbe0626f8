"""Phones, keyboards and browsers without JavaScript: the menu opens without scripts, Escape closes it, a key
is copied or at least selected, and revoking or rolling a key needs no script at all."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import expect

from tests.browser.test_keys_flow import sign_up

PHONE = {"width": 390, "height": 844}


@pytest.fixture
def no_script_phone(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport=PHONE, java_script_enabled=False)
    yield context.new_page()
    context.close()


def create_key(page: Any, name: str) -> str:
    """Create a test key from the empty key list; returns the key's own page URL."""
    page.get_by_role("link", name="Create your first key").click()
    page.get_by_label("Name").fill(name)
    page.get_by_role("button", name="Create key").click()
    page.get_by_role("link", name="I have stored it, continue").click()
    return page.url


def test_the_phone_menu_opens_without_javascript(no_script_phone, live_server):
    page = no_script_phone
    sign_up(page, live_server)
    keys = page.get_by_role("link", name="Usage")
    assert not keys.is_visible()  # folded away behind the menu button
    page.get_by_text("Menu", exact=True).click()
    assert keys.is_visible()
    keys.click()
    page.wait_for_url("**/usage")
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]


def test_the_open_phone_menu_passes_axe(browser, live_server):
    context = browser.new_context(viewport=PHONE)
    page = context.new_page()
    try:
        sign_up(page, live_server)
        page.get_by_text("Menu", exact=True).click()
        expect(page.get_by_role("button", name="Sign out")).to_be_visible()
        assert Axe().run(page).response["violations"] == []
    finally:
        context.close()


def test_escape_closes_the_switcher_and_the_menu(browser, live_server):
    context = browser.new_context(viewport=PHONE)
    page = context.new_page()
    try:
        sign_up(page, live_server)
        for summary in (".org-switcher > summary", ".nav-menu > summary"):
            page.locator(summary).click()
            assert page.locator(summary).evaluate("s => s.parentElement.open")
            page.keyboard.press("Escape")
            assert not page.locator(summary).evaluate("s => s.parentElement.open")
            assert page.evaluate("document.activeElement.tagName") == "SUMMARY"  # the focus stays where it was
    finally:
        context.close()


def test_copy_is_announced_and_falls_back_to_selecting_the_key(page, live_server):
    sign_up(page, live_server)
    page.get_by_role("link", name="Create your first key").click()
    page.get_by_label("Name").fill("Copy check")
    page.get_by_role("button", name="Create key").click()
    secret = page.locator("#new-key").inner_text().strip()
    copy = page.locator("button[data-copy='#new-key']")
    copy.click()
    expect(page.locator("#announcer[role=status]")).to_have_text("Copied to the clipboard.")
    assert page.evaluate("navigator.clipboard.readText()") == secret

    # As on a plain-http host: no Clipboard API. The key is selected instead, and the page says how to copy it.
    page.evaluate("Object.defineProperty(navigator, 'clipboard', {value: undefined})")
    copy.click()
    assert page.evaluate("window.getSelection().toString().trim()") == secret
    expect(copy).to_have_text("Selected")
    expect(page.locator("#announcer[role=status]")).to_contain_text("Press Control+C")


def test_revoke_and_roll_work_with_javascript_off(no_script_phone, live_server):
    page = no_script_phone
    sign_up(page, live_server)
    rolled_url = create_key(page, "Rolled without scripts")

    page.get_by_role("link", name="Roll key…").click()
    expect(page.get_by_role("heading", name="Roll “Rolled without scripts”?")).to_be_visible()
    page.get_by_role("button", name="Roll key").click()
    new_secret = page.locator("#new-key").inner_text().strip()
    assert new_secret.startswith("pk_test_")
    page.get_by_role("link", name="I have stored it, continue").click()
    new_key_url = page.url
    assert new_key_url != rolled_url
    page.goto(rolled_url)
    expect(page.get_by_role("heading", name="Rotation watch")).to_be_visible()  # the old key is rolled, in its grace

    page.goto(new_key_url)
    page.get_by_role("link", name="Revoke key…").click()
    expect(page.get_by_role("heading", name="Revoke “Rolled without scripts”?")).to_be_visible()
    page.get_by_role("button", name="Revoke key").click()  # no window.confirm: the page itself asked
    expect(page.get_by_text("is revoked")).to_be_visible()
    assert page.locator(".badge.status-revoked").first.is_visible()
    answer = page.request.post(f"{live_server}/v1/keys/verify", data={"key": new_secret, "endpoint": "/no-js"})
    assert answer.status == 401 and answer.json()["code"] == "revoked"
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
