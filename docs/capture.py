"""Screenshots of the portal for docs/: run `make dev` in one terminal, then
`.venv/bin/python docs/capture.py [http://127.0.0.1:5000]`. Uses Debian's Chromium through Playwright.

The one page that shows a secret is captured with the secret masked.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

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


def sign_in(page, email: str, password: str) -> None:
    page.goto(f"{BASE}/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


def main() -> None:
    with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        browser = p.chromium.launch_persistent_context(
            profile, executable_path="/usr/bin/chromium", args=ARGS, viewport={"width": 1200, "height": 800}
        )
        page = browser.new_page()
        page.goto(f"{BASE}/signup")
        page.screenshot(path=OUT / "01-sign-up.png")
        sign_in(page, "demo@procode.dev", "demo-password")
        page.goto(f"{BASE}/orgs/default/keys/")
        page.screenshot(path=OUT / "02-keys.png", full_page=True)
        page.goto(f"{BASE}/orgs/default/keys/new")
        page.get_by_label("Name").fill("Docs example key")
        page.get_by_role("button", name="Create key").click()
        page.screenshot(path=OUT / "03-key-created.png", mask=[page.locator(".secret-value")])
        page.get_by_role("link", name="I have stored it, continue").click()
        page.screenshot(path=OUT / "04-key-detail.png", full_page=True)
        for path, name in (
            ("/orgs/default/members", "05-members"),
            ("/orgs/default/audit", "06-audit"),
            ("/docs/api", "07-api-docs"),
        ):
            page.goto(BASE + path)
            page.screenshot(path=OUT / f"{name}.png", full_page=True)
        page.goto(f"{BASE}/orgs/default/keys/")
        page.get_by_role("button", name="Sign out").click()
        sign_in(page, "support@procode.dev", "support-password")
        page.goto(f"{BASE}/staff/?q=default")
        page.screenshot(path=OUT / "08-staff-search.png", full_page=True)
        page.get_by_role("link", name="Default Organization").first.click()
        page.screenshot(path=OUT / "09-staff-org.png", full_page=True)
        browser.close()


if __name__ == "__main__":
    main()
