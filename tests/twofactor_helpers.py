"""Driving two-factor through its pages, as a user would, with codes computed by pyotp."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from html import unescape
from typing import Any

import pyotp

from portal.timeutil import utcnow

CODE_RE = re.compile(r"\b[2-9a-z]{4}-[2-9a-z]{4}-[2-9a-z]{4}\b")


def code_at(secret: str, moment: datetime) -> str:
    return pyotp.TOTP(secret).at(moment)


def setup_key(html: str) -> str:
    match = re.search(r'<code class="setup-key" id="setup-key">(.*?)</code>', html, re.S)
    assert match, "no setup key on the page"
    key = re.sub(r"<[^>]+>|\s", "", match.group(1))
    assert re.fullmatch(r"[A-Z2-7]+", key), key
    return key


def recovery_codes(html: str) -> list[str]:
    match = re.search(r'<pre class="secret-value" id="recovery-codes">(.*?)</pre>', html, re.S)
    assert match, "no recovery codes on the page"
    return CODE_RE.findall(unescape(match.group(1)))


def enrol(client: Any) -> tuple[str, list[str]]:
    """Set up an authenticator app for the signed-in user: (the secret, the recovery codes shown once)."""
    secret = setup_key(client.get("/account/two-factor/app").get_data(as_text=True))
    response = client.post("/account/two-factor/app", data={"code": code_at(secret, utcnow())}, follow_redirects=True)
    assert response.status_code == 200, response.get_data(as_text=True)
    return secret, recovery_codes(response.get_data(as_text=True))


def next_step_code(secret: str) -> str:
    """A code for the step after the current one: still accepted (clock drift), and not yet used."""
    return code_at(secret, utcnow() + timedelta(seconds=30))
