"""Screenshots of the portal for docs/: run `make dev` in one terminal, then
`.venv/bin/python docs/capture.py [http://127.0.0.1:5000]`. Uses Debian's Chromium through Playwright.

Pages that show a secret (a new key, an authenticator setup key and its QR code, recovery codes) are
captured with the secret masked or shown as dots. The account pages belong to a fresh, randomly named account
signed up on each run, which also turns on two-factor authentication; the demo logins stay password-only. Each
run is one sign-up, and the portal allows 5 per address and hour (SIGNUP_MAX_PER_IP). The keys a run creates in
the demo organization are revoked at its end, so runs can repeat within the Free plan's key limit.
"""

from __future__ import annotations

import secrets
import sys
import tempfile
from pathlib import Path

import pyotp
from playwright.sync_api import sync_playwright

BASE = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:5000"
OUT = Path(__file__).parent
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1200, "height": 800}
# The sessions page and security log name the browser: show a desktop Chrome, not "HeadlessChrome".
DESKTOP_AGENT = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
# The second session on the account's sessions page: a phone.
PHONE_AGENT = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.5 Mobile/15E148 Safari/604.1"
)


def sign_in(page, email: str, password: str) -> None:
    page.goto(f"{BASE}/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


def sign_out(page) -> None:
    page.get_by_role("button", name="Sign out").first.click()


def read_and_hide_setup_key(page) -> str:
    """The setup key on the enrolment page, which is then shown as dots (the layout stays the same)."""
    shown = page.locator("#setup-key")
    setup_key = shown.inner_text()
    shown.evaluate("(el, dots) => { el.textContent = dots; }", "".join(c if c == " " else "•" for c in setup_key))
    return setup_key.replace(" ", "")


def hide_recovery_codes(page) -> None:
    """The recovery codes, shown as dots in their own layout (a mask drawn over their two columns misses)."""
    page.locator("#recovery-codes").evaluate("el => { el.textContent = el.textContent.replace(/[A-Za-z0-9]/g, '•'); }")


def rotation_watch(p, page) -> list[str]:
    """Roll a key that a service still calls: the old key's page watches its calls until it is safe to revoke.

    Returns the addresses of the pages of the keys it made (the old and the new)."""
    page.goto(f"{BASE}/orgs/default/keys/new")
    page.get_by_label("Name").fill("Billing worker")
    page.get_by_role("button", name="Create key").click()
    old_secret = page.locator("#new-key").inner_text().strip()
    page.get_by_role("link", name="I have stored it, continue").click()
    old_url = page.url
    page.get_by_role("link", name="Roll key…").click()
    page.get_by_role("button", name="Roll key").click()
    page.get_by_role("link", name="I have stored it, continue").click()
    new_url = page.url
    api = p.request.new_context(base_url=BASE)
    for _ in range(3):  # the billing worker has not been redeployed with the new key yet
        api.get("/v1/whoami", headers={"Authorization": f"Bearer {old_secret}"})
    api.dispose()
    page.wait_for_timeout(1500)  # usage rows are written in batches, a fraction of a second later
    page.goto(old_url)
    page.screenshot(path=OUT / "04-key-rotation.png", full_page=True)
    page.goto(old_url + "/revoke")  # what revoking the old key would break: its calls and clients of a day
    page.screenshot(path=OUT / "21-confirm-revoke.png", full_page=True)
    return [old_url, new_url]


def live_key_and_phone(p, page) -> str:
    """A live key: its band, the typed confirmation its revoke asks for, and the key page on a phone."""
    page.goto(f"{BASE}/orgs/default/keys/new")
    page.get_by_label("Name").fill("Docs live key")
    page.get_by_label("Live (pk_live_…)").check()
    page.get_by_role("button", name="Create key").click()
    page.get_by_role("link", name="I have stored it, continue").click()
    url = page.url
    page.screenshot(path=OUT / "22-live-key.png", full_page=True)
    page.goto(url + "/revoke")
    page.screenshot(path=OUT / "23-confirm-revoke-live.png", full_page=True)
    phone = page.context.new_page()
    phone.set_viewport_size({"width": 390, "height": 844})
    phone.goto(url)
    phone.get_by_text("Menu", exact=True).click()
    phone.screenshot(path=OUT / "24-phone-key-page.png")
    phone.goto(f"{BASE}/orgs/default/keys/")
    phone.screenshot(path=OUT / "25-phone-keys.png", full_page=True)
    phone.close()
    return url


def account_pages(p, page) -> None:
    """A fresh account: check-email, sessions, security log, two-factor set-up, and the two-factor sign-in."""
    email = f"docs-{secrets.token_hex(4)}@example.com"
    password = secrets.token_urlsafe(16)
    page.goto(f"{BASE}/signup")
    page.get_by_label("Your name").fill("Ada Reader")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Create account").click()
    page.wait_for_url("**/check-email**")
    page.screenshot(path=OUT / "10-check-email.png")
    sign_in(page, email, password)  # sign-up alone signs nobody in
    page.wait_for_url("**/keys/")

    # A second session in a browser of its own, so that the sessions page has one to sign out.
    other = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
    phone = other.new_context(user_agent=PHONE_AGENT, viewport=VIEWPORT).new_page()
    phone.goto(f"{BASE}/login")
    phone.get_by_label("Email").fill(email)
    phone.get_by_label("Password").fill(password)
    phone.get_by_label("Keep me signed in").check()
    phone.get_by_role("button", name="Sign in").click()
    phone.wait_for_load_state()
    other.close()

    page.goto(f"{BASE}/account/sessions")
    page.screenshot(path=OUT / "11-account-sessions.png", full_page=True)
    page.goto(f"{BASE}/account/security")
    page.screenshot(path=OUT / "12-security-log.png", full_page=True)
    page.goto(f"{BASE}/account/two-factor/")
    page.screenshot(path=OUT / "13-two-factor.png", full_page=True)
    page.get_by_role("link", name="Set up an authenticator app").click()
    setup_key = read_and_hide_setup_key(page)
    page.screenshot(path=OUT / "14-two-factor-app.png", full_page=True, mask=[page.locator(".qr img")])
    page.get_by_label("Code from the app").fill(pyotp.TOTP(setup_key).now())  # as the authenticator app would
    page.get_by_role("button", name="Turn on").click()
    hide_recovery_codes(page)
    page.screenshot(path=OUT / "15-recovery-codes.png", full_page=True)
    page.get_by_role("link", name="I have saved them").click()
    sign_out(page)
    sign_in(page, email, password)
    page.wait_for_url("**/login/two-factor")
    page.screenshot(path=OUT / "16-two-factor-sign-in.png")


def main() -> None:
    with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        browser = p.chromium.launch_persistent_context(
            profile, executable_path="/usr/bin/chromium", args=ARGS, viewport=VIEWPORT, user_agent=DESKTOP_AGENT
        )
        page = browser.new_page()
        page.goto(f"{BASE}/signup")
        page.screenshot(path=OUT / "01-sign-up.png")
        sign_in(page, "demo@procode.dev", "demo-password")
        page.goto(f"{BASE}/orgs/default/keys/")
        page.screenshot(path=OUT / "02-keys.png", full_page=True)
        page.goto(f"{BASE}/orgs/default/keys/new")
        page.get_by_label("Name").fill("Docs example key")
        for scope in ("Translate (read)", "Translate (write)", "Embed (read)"):
            page.get_by_label(scope).check()
        page.get_by_label("Allowed addresses").fill("203.0.113.0/24\n2001:db8::/32")
        page.get_by_label("Requests per minute for this key").fill("30")
        # External ids are unique per organization, also among revoked keys: a fresh one on each run.
        page.get_by_label("External id").fill(f"acct-{secrets.token_hex(3)}")
        page.get_by_label("Metadata (JSON)").fill('{"customer": "Acme Ltd", "tier": "gold"}')
        page.screenshot(path=OUT / "03-create-key.png", full_page=True)
        page.get_by_role("button", name="Create key").click()
        page.screenshot(path=OUT / "03-key-created.png", mask=[page.locator(".secret-value")])
        page.get_by_role("link", name="I have stored it, continue").click()
        page.screenshot(path=OUT / "04-key-detail.png", full_page=True)
        created = [page.url]
        created += rotation_watch(p, page)
        live_url = live_key_and_phone(p, page)
        for path, name in (
            ("/orgs/default/members", "05-members"),
            ("/orgs/default/audit", "06-audit"),
            ("/docs/api", "07-api-docs"),
            ("/orgs/default/settings", "19-org-settings"),
        ):
            page.goto(BASE + path)
            page.screenshot(path=OUT / f"{name}.png", full_page=True)
        page.goto(f"{BASE}/orgs/default/members")
        page.get_by_role("link", name="Leave…").first.click()
        page.screenshot(path=OUT / "20-offboarding.png", full_page=True)
        page.goto(f"{BASE}/orgs/default/keys/")
        page.get_by_role("button", name="Sign out").click()
        sign_in(page, "support@procode.dev", "support-password")
        page.goto(f"{BASE}/staff/?q=default")
        page.screenshot(path=OUT / "08-staff-search.png", full_page=True)
        page.get_by_role("link", name="Default Organization").first.click()
        page.screenshot(path=OUT / "09-staff-org.png", full_page=True)
        sign_out(page)
        account_pages(p, page)
        page.goto(f"{BASE}/password/forgot")
        page.screenshot(path=OUT / "17-forgot-password.png")
        sign_in(page, "support@procode.dev", "support-password")
        page.goto(f"{BASE}/staff/mail")
        page.screenshot(path=OUT / "18-staff-mail.png", full_page=True)
        sign_out(page)
        # Revoke this run's keys, so that the demo organization stays within its plan's key limit.
        sign_in(page, "demo@procode.dev", "demo-password")
        for url in created:
            page.goto(url + "/revoke")
            if page.get_by_role("button", name="Revoke key", exact=True).count():
                page.get_by_role("button", name="Revoke key", exact=True).click()
                page.wait_for_load_state()
        page.goto(live_url + "/revoke")
        page.get_by_label("Type the key's name to confirm").fill("Docs live key")
        page.get_by_role("button", name="Revoke key", exact=True).click()
        browser.close()


if __name__ == "__main__":
    main()
