"""Removing a member, revoking an invite link and deleting an organization, with JavaScript off: each asks on a
page of its own, and the removed member's open tab says what happened."""

from __future__ import annotations

import re
import secrets
from typing import Any

import pytest
from playwright.sync_api import expect

PASSWORD = "a long enough password"


@pytest.fixture
def no_script(browser: Any) -> Any:
    """A fresh browser profile with JavaScript disabled; call it for each person."""
    contexts = []

    def open_page() -> Any:
        context = browser.new_context(viewport={"width": 1200, "height": 900}, java_script_enabled=False)
        contexts.append(context)
        return context.new_page()

    yield open_page
    for context in contexts:
        context.close()


def sign_up_and_in(page: Any, base: str, name: str, start: str = "/signup") -> str:
    email = f"{name.split()[0].lower()}-{secrets.token_hex(4)}@example.com"
    page.goto(base + start)
    page.get_by_label("Your name").fill(name)
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Create account").click()
    page.get_by_role("main").get_by_role("link", name="Sign in").click()
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    return email


def invite_link(page: Any, base: str, slug: str) -> str:
    page.goto(f"{base}/orgs/{slug}/members")
    page.get_by_label("Role", exact=True).select_option("developer")
    page.get_by_role("button", name="Create invite link").click()
    return page.locator("#invite-link").inner_text().strip()


def test_remove_revoke_and_delete_without_javascript(no_script, live_server):
    owner = no_script()
    sign_up_and_in(owner, live_server, "Olive Owner")
    owner.wait_for_url("**/keys/")
    slug = re.search(r"/orgs/([^/]+)/keys/", owner.url).group(1)

    # A developer joins through an invite link and creates a key.
    link = invite_link(owner, live_server, slug)
    dev = no_script()
    dev.goto(link)
    dev.get_by_role("link", name="Create an account").click()
    sign_up_and_in(dev, live_server, "Dana Developer", start=dev.url.removeprefix(live_server))
    dev.get_by_role("button", name="Accept and join").click()
    dev.wait_for_url(f"**/orgs/{slug}/keys/")
    dev.goto(f"{live_server}/orgs/{slug}/keys/new")
    dev.get_by_label("Name").fill("Dana's worker")
    dev.get_by_role("button", name="Create key").click()
    dev.goto(f"{live_server}/orgs/{slug}/keys/")  # the tab Dana leaves open

    # Removing her asks first, and names the key that keeps working.
    owner.goto(f"{live_server}/orgs/{slug}/members")
    owner.get_by_role("link", name="Remove…").click()
    expect(owner.get_by_role("heading", name=re.compile("Remove Dana Developer from"))).to_be_visible()
    expect(owner.locator("#keys-left-working").get_by_text("Dana's worker")).to_be_visible()
    expect(owner.get_by_role("link", name=re.compile("off-boarding page"))).to_be_visible()
    owner.get_by_role("button", name="Remove Dana Developer").click()
    expect(owner.get_by_text(re.compile("Dana Developer was removed")).first).to_be_visible()

    dev.reload()
    expect(dev.get_by_role("heading", name=re.compile("You were removed from"))).to_be_visible()
    expect(dev.get_by_text("Olive Owner").first).to_be_visible()

    # Revoking an invite link asks on a page too.
    invite_link(owner, live_server, slug)
    owner.get_by_role("link", name="Back to members").click()
    owner.get_by_role("link", name="Revoke…").click()
    expect(owner.get_by_text("stops working at once")).to_be_visible()
    owner.get_by_role("button", name="Revoke invitation").click()
    expect(owner.get_by_text("Invitation revoked")).to_be_visible()

    # Deleting the organization: from the danger zone, with its address typed.
    owner.goto(f"{live_server}/orgs/{slug}/settings")
    owner.locator("#danger-zone").get_by_role("link", name="Delete organization…").click()
    owner.get_by_role("button", name=re.compile("^Delete ")).click()  # nothing typed: refused
    expect(owner.get_by_text("Type the name or the address to confirm.")).to_be_visible()
    owner.get_by_label(re.compile("Type the organization's name")).fill(slug)
    owner.get_by_role("button", name=re.compile("^Delete ")).click()
    expect(owner.get_by_text(re.compile("is deleted. 1 key revoked"))).to_be_visible()
    owner.goto(f"{live_server}/orgs/{slug}/keys/")
    expect(owner.get_by_role("heading", name=re.compile("was deleted"))).to_be_visible()
