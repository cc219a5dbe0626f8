"""A new customer's first minutes, in a real browser: sign up, create a key, copy it, use it, revoke it."""

from __future__ import annotations

import re
import secrets
import time

from playwright.sync_api import expect

from portal.keys import format as keyformat


def sign_up(page, live_server: str) -> str:
    email = f"browser-{secrets.token_hex(4)}@example.com"
    page.goto(f"{live_server}/signup")
    page.get_by_label("Your name").fill("Grace Hopper")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill("a long enough password")
    page.get_by_role("button", name="Create account").click()
    expect(page.get_by_role("heading", name="Check your email")).to_be_visible()
    page.get_by_role("main").get_by_role("link", name="Sign in").click()  # sign-up alone signs nobody in
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill("a long enough password")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/keys/")
    return email


def test_sign_up_create_copy_and_revoke_a_key(page, live_server):
    sign_up(page, live_server)
    expect(page.get_by_role("heading", name="No keys yet")).to_be_visible()

    page.get_by_role("link", name="Create your first key").click()
    page.get_by_label("Name").fill("Checkout service")
    page.get_by_role("button", name="Create key").click()

    secret = page.locator("#new-key").inner_text().strip()
    assert keyformat.parse(secret) is not None and secret.startswith("pk_test_")
    page.get_by_role("button", name="Copy").first.click()
    assert page.evaluate("navigator.clipboard.readText()") == secret
    expect(page.get_by_role("button", name="Copied")).to_be_visible()

    page.get_by_role("link", name="I have stored it, continue").click()
    assert secret not in page.content()
    expect(page.get_by_text(keyformat.hint(secret))).to_be_visible()
    verify = f"{live_server}/v1/keys/verify"
    call = {"key": secret, "endpoint": "/browser", "client_ip": "203.0.113.9", "user_agent": "shop-backend/1.0"}
    answer = page.request.post(verify, data=call)
    assert answer.status == 200 and answer.json()["valid"] is True  # the same server's API knows it at once

    page.get_by_role("link", name="Revoke key…").click()  # a page that says what will break, not a dialog
    for _ in range(40):  # the call's usage row is written within a fraction of a second
        if page.locator("#clients-table").count():
            break
        time.sleep(0.25)
        page.reload()
    expect(page.get_by_text("1 call in the last 24 hours")).to_be_visible()
    expect(page.locator("#clients-table").get_by_text("203.0.113.9")).to_be_visible()
    page.get_by_role("button", name="Revoke key").click()
    expect(page.get_by_text("is revoked")).to_be_visible()
    assert page.locator(".badge.status-revoked").first.is_visible()
    answer = page.request.post(verify, data={"key": secret, "endpoint": "/browser"})
    assert answer.status == 401 and answer.json()["code"] == "revoked"  # and the very next call is refused


def test_reloading_the_created_page_never_shows_the_key_again(page, live_server):
    sign_up(page, live_server)
    page.goto(page.url.rstrip("/") + "/new")
    page.get_by_label("Name").fill("Reload check")
    page.get_by_role("button", name="Create key").click()
    secret = page.locator("#new-key").inner_text().strip()
    page.once("dialog", lambda dialog: dialog.accept())
    page.reload()  # browsers re-send the POST; the form's request token makes it find the first key
    assert secret not in page.content()
    expect(page.get_by_text("already created")).to_be_visible()
    assert re.search(r"/keys/[0-9a-f-]{36}$", page.url)


def test_phone_width_keeps_the_key_page_usable(browser, live_server):
    context = browser.new_context(viewport={"width": 390, "height": 844})
    page = context.new_page()
    try:
        sign_up(page, live_server)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390
        expect(page.get_by_role("link", name="Create your first key")).to_be_visible()
    finally:
        context.close()


def test_select_all_then_revoke_the_selection_after_confirming(page, live_server):
    sign_up(page, live_server)
    secrets_by_name = {}
    for name in ("Batch one", "Batch two"):
        page.goto(page.url.split("/keys/")[0] + "/keys/new")
        page.get_by_label("Name").fill(name)
        page.get_by_role("button", name="Create key").click()
        secrets_by_name[name] = page.locator("#new-key").inner_text().strip()
        page.get_by_role("link", name="I have stored it, continue").click()
    page.goto(page.url.split("/keys/")[0] + "/keys/?sort=oldest")

    page.get_by_label("Select every key on this page").check()  # shown only with script
    assert page.get_by_label("Select Batch one").is_checked() and page.get_by_label("Select Batch two").is_checked()
    page.get_by_role("button", name="Revoke selected keys").click()
    expect(page.get_by_role("heading", name="Revoke 2 keys?")).to_be_visible()
    for secret in secrets_by_name.values():
        expect(page.get_by_text(keyformat.hint(secret))).to_be_visible()

    page.get_by_role("button", name="Revoke 2 keys").click()
    expect(page.get_by_text("2 keys revoked")).to_be_visible()
    assert re.search(r"/keys/\?sort=oldest$", page.url)  # back to the list as it was
    verify = f"{live_server}/v1/keys/verify"
    for secret in secrets_by_name.values():
        answer = page.request.post(verify, data={"key": secret, "endpoint": "/browser"})
        assert answer.status == 401 and answer.json()["code"] == "revoked"
