"""Two-factor sign-in in a real browser: an authenticator app (codes from pyotp) and a passkey (Chromium's
virtual authenticator). Passkeys need a host name, so these pages are opened at localhost, the relying party
the live server is configured with."""

from __future__ import annotations

import secrets
from datetime import timedelta

import pyotp
from playwright.sync_api import expect

from portal.timeutil import utcnow

PASSWORD = "a long enough password"


def _base(live_server: str) -> str:
    return live_server.replace("127.0.0.1", "localhost")


def sign_up(page, base: str) -> str:
    email = f"two-factor-{secrets.token_hex(4)}@example.com"
    page.goto(f"{base}/signup")
    page.get_by_label("Your name").fill("Ada Lovelace")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Create account").click()
    page.get_by_role("main").get_by_role("link", name="Sign in").click()  # sign-up alone signs nobody in
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/keys/")
    return email


def sign_out_and_enter_password(page, base: str, email: str) -> None:
    page.get_by_role("button", name="Sign out").click()
    page.goto(f"{base}/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/login/two-factor")


def test_authenticator_app_enrolment_and_sign_in(page, live_server):
    base = _base(live_server)
    email = sign_up(page, base)
    page.goto(f"{base}/account/two-factor/")
    assert page.locator("#two-factor-state").inner_text() == "Off"
    page.get_by_role("link", name="Set up an authenticator app").click()

    qr = page.get_by_alt_text("QR code for your authenticator app")
    assert qr.is_visible() and qr.evaluate("img => img.complete && img.naturalWidth > 0")  # drawn despite the CSP
    secret = page.locator("#setup-key").inner_text().replace(" ", "")
    page.get_by_label("Code from the app").fill("000000" if pyotp.TOTP(secret).now() != "000000" else "111111")
    page.get_by_role("button", name="Turn on").click()
    expect(page.get_by_text("does not match")).to_be_visible()
    page.get_by_label("Code from the app").fill(pyotp.TOTP(secret).now())
    page.get_by_role("button", name="Turn on").click()

    expect(page.get_by_role("heading", name="Save your recovery codes")).to_be_visible()
    assert len(page.locator("#recovery-codes").inner_text().split()) == 10
    page.get_by_role("link", name="I have saved them").click()
    assert page.locator("#two-factor-state").inner_text() == "On"

    sign_out_and_enter_password(page, base, email)
    page.get_by_label("Authentication code").fill(pyotp.TOTP(secret).at(utcnow() + timedelta(seconds=30)))
    page.get_by_role("button", name="Verify").click()
    page.wait_for_url("**/keys/")
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()


def test_passkey_registration_and_sign_in(page, live_server):
    cdp = page.context.new_cdp_session(page)
    cdp.send("WebAuthn.enable")
    authenticator = cdp.send(
        "WebAuthn.addVirtualAuthenticator",
        {
            "options": {
                "protocol": "ctap2",
                "transport": "internal",
                "hasResidentKey": True,
                "hasUserVerification": True,
                "isUserVerified": True,
            }
        },
    )["authenticatorId"]
    base = _base(live_server)
    email = sign_up(page, base)

    page.goto(f"{base}/account/two-factor/")
    page.get_by_role("link", name="Add a passkey").click()
    page.get_by_label("Passkey name").fill("Work laptop")
    page.get_by_role("button", name="Create passkey").click()  # the ceremony runs, then the form is posted
    page.get_by_role("heading", name="Save your recovery codes").wait_for()
    expect(page.get_by_text("Passkey “Work laptop” added")).to_be_visible()
    page.get_by_role("link", name="I have saved them").click()
    expect(page.locator("#passkeys").get_by_text("Work laptop")).to_be_visible()
    assert page.locator("#two-factor-state").inner_text() == "On"
    [credential] = cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator})["credentials"]
    assert credential["rpId"] == "localhost"

    sign_out_and_enter_password(page, base, email)
    page.get_by_role("button", name="Use a passkey").click()
    page.wait_for_url("**/keys/")
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    [used] = cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator})["credentials"]
    assert used["signCount"] > credential["signCount"]

    page.goto(f"{base}/account/two-factor/")
    assert "last used" in page.locator("#passkeys").inner_text()
