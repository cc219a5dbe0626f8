"""In a real browser, against the shipped server (CSRF on): watch a rolled key, give it more time, revoke it;
and revoke a key through the public leak API."""

from __future__ import annotations

from playwright.sync_api import expect

from tests.browser.test_keys_flow import sign_up


def test_roll_watch_extend_and_revoke_the_old_key(page, live_server):
    sign_up(page, live_server)
    page.get_by_role("link", name="Create your first key").click()
    page.get_by_label("Name").fill("Search backend")
    page.get_by_role("button", name="Create key").click()
    old_secret = page.locator("#new-key").inner_text().strip()
    page.get_by_role("link", name="I have stored it, continue").click()
    old_key_url = page.url

    page.get_by_role("link", name="Roll key…").click()
    page.get_by_label("Keep the old key working for").select_option("24h")
    page.get_by_role("button", name="Roll key").click()
    page.get_by_role("link", name="I have stored it, continue").click()

    page.goto(old_key_url)
    expect(page.get_by_role("heading", name="Rotation watch")).to_be_visible()
    expect(page.get_by_text("Still in use")).to_be_visible()
    verify = f"{live_server}/v1/keys/verify"
    assert page.request.post(verify, data={"key": old_secret}).status == 200  # still working in its grace

    page.get_by_label("Keep the old key working (hours more)").fill("48")
    page.get_by_role("button", name="Extend grace period").click()
    expect(page.get_by_text("The old key now keeps working until")).to_be_visible()

    page.get_by_label("Safe to revoke after (hours without calls)").fill("0")
    page.get_by_role("button", name="Check").click()
    expect(page.locator("#rotation-watch .error")).to_be_visible()  # a form error, the page still works

    page.get_by_role("link", name="Revoke key…").click()
    page.get_by_role("button", name="Revoke key").click()
    expect(page.get_by_text("is revoked")).to_be_visible()
    assert page.request.post(verify, data={"key": old_secret}).json()["code"] == "revoked"


def test_a_key_posted_to_the_revocation_api_stops_working(page, live_server):
    sign_up(page, live_server)
    page.get_by_role("link", name="Create your first key").click()
    page.get_by_label("Name").fill("Pasted by mistake")
    page.get_by_role("button", name="Create key").click()
    secret = page.locator("#new-key").inner_text().strip()
    page.get_by_role("link", name="I have stored it, continue").click()

    answer = page.request.post(f"{live_server}/v1/keys/revoke", data={"key": secret})
    assert answer.status == 202 and answer.json() == {"status": "accepted"}

    page.reload()
    assert page.locator(".badge.status-revoked").first.is_visible()
    page.get_by_role("link", name="Audit").click()
    assert page.get_by_text("reported leaked").first.is_visible()
