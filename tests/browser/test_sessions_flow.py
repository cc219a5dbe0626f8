"""Sessions in a real browser: a second browser is listed on the account page and signed out from it."""

from __future__ import annotations

from playwright.sync_api import expect

from tests.browser.test_keys_flow import sign_up


def test_sign_out_another_browser_from_the_account_page(browser, page, live_server):
    email = sign_up(page, live_server)
    other_context = browser.new_context(user_agent="Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:128.0) Firefox/128.0")
    try:
        other = other_context.new_page()
        other.goto(f"{live_server}/login")
        other.get_by_label("Email").fill(email)
        other.get_by_label("Password").fill("a long enough password")
        other.get_by_label("Keep me signed in").check()
        other.get_by_role("button", name="Sign in").click()
        expect(other.get_by_role("heading", name="No keys yet")).to_be_visible()

        page.get_by_role("link", name="Grace Hopper").click()
        expect(page.get_by_role("heading", name="Your account")).to_be_visible()
        expect(page.get_by_text("This session")).to_be_visible()
        expect(page.get_by_text("Firefox 128")).to_be_visible()  # the other browser, parsed from its user agent

        page.once("dialog", lambda dialog: dialog.accept())
        page.get_by_role("button", name="Sign out all other sessions").click()
        expect(page.get_by_text("Signed out 1 other session.")).to_be_visible()
        assert not page.get_by_text("Firefox 128").is_visible()

        other.reload()  # its session cookie and remember-me cookie are both refused now
        expect(other.get_by_role("heading", name="Sign in to ProCode")).to_be_visible()

        page.get_by_role("link", name="Security log").click()
        expect(page.get_by_text("Signed out all other sessions")).to_be_visible()
    finally:
        other_context.close()
