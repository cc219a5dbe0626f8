"""Each account's security log: what is recorded, what the owner sees, and what no one else does."""

from __future__ import annotations

import re

import pytest
import sqlalchemy as sa

from portal.account import security_log
from portal.extensions import db
from portal.models import SecurityEvent
from tests import factories
from tests.test_sessions import CHROME_WINDOWS, FIREFOX_LINUX, session_of, sign_in


def events(user):
    return db.session.scalars(
        sa.select(SecurityEvent).where(SecurityEvent.user_id == user.id).order_by(SecurityEvent.occurred_at)
    ).all()


def rows(page_html):
    """The log page's rows as (event label, address, device, details) text."""
    found = []
    for row in re.findall(r"<tr class=\"event-[^\"]+\">(.*?)</tr>", page_html, re.S):
        cells = [re.sub(r"<[^>]+>", " ", c).split() for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
        found.append(tuple(" ".join(c) for c in cells[1:]))
    return found


def test_sign_in_success_and_failure_are_logged_for_the_owner(app, client, owner):
    attempt = {"email": owner.email, "password": "wrong password!"}
    wrong = client.post(
        "/login", data=attempt, environ_base={"REMOTE_ADDR": "203.0.113.66", "HTTP_USER_AGENT": "curl/8.5.0"}
    )
    unknown = client.post(
        "/login", data={**attempt, "email": "nobody@example.com"}, environ_base={"REMOTE_ADDR": "203.0.113.66"}
    )
    # The attacker learns nothing: the same answer whether or not the account exists.
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.get_data(as_text=True).replace(owner.email, "nobody@example.com") == unknown.get_data(as_text=True)

    browser = sign_in(app, owner, user_agent=FIREFOX_LINUX, ip="198.51.100.7")
    page = browser.get("/account/security").get_data(as_text=True)
    assert rows(page) == [
        ("Signed in", "198.51.100.7", "Firefox 128 on Ubuntu", "Remember no"),
        ("Failed sign-in attempt", "203.0.113.66", "curl 8 on unknown system", "Reason wrong password"),
    ]
    assert [e.event for e in events(owner)] == ["signin.failure", "signin.success"]
    # Nothing is kept against an address for an email no account has.
    assert db.session.scalar(sa.select(sa.func.count()).select_from(SecurityEvent)) == 2


def test_a_deactivated_accounts_attempt_is_logged_as_a_failure(client, owner):
    owner.is_active = False
    db.session.commit()
    assert client.post("/login", data={"email": owner.email, "password": factories.PASSWORD}).status_code == 401
    [event] = events(owner)
    assert event.event == "signin.failure" and event.detail == {"reason": "account deactivated"}


def test_throttled_attempts_are_not_logged(app, client, owner):
    limit = app.config["LOGIN_MAX_FAILURES_PER_ACCOUNT"]
    for _ in range(limit + 3):
        client.post("/login", data={"email": owner.email, "password": "wrong password!"})
    assert [e.event for e in events(owner)] == ["signin.failure"] * limit


def test_revocations_and_password_change_are_logged(app, owner):
    here = sign_in(app, owner, user_agent=FIREFOX_LINUX)
    sign_in(app, owner, user_agent=CHROME_WINDOWS, ip="203.0.113.9")
    sign_in(app, owner)
    sign_in(app, owner)
    chrome = session_of(owner, CHROME_WINDOWS)
    here.post(f"/account/sessions/{chrome.id}/revoke")
    here.post("/account/sessions/revoke-others")
    sign_in(app, owner)
    here.post(
        "/account/password",
        data={
            "current_password": factories.PASSWORD,
            "new_password": "a brand new password",
            "confirm": "a brand new password",
        },
    )
    here.post("/logout")

    logged = [(e.event, e.detail) for e in events(owner) if e.event != "signin.success"]
    assert logged == [
        ("session.revoked", {"session": "Chrome 126 on Windows 10", "session_address": "203.0.113.9"}),
        ("sessions.revoked_others", {"sessions_ended": 2}),
        ("password.changed", {"sessions_ended": 1}),
        ("signout", {}),
    ]
    page = sign_in(app, owner, password="a brand new password").get("/account/security").get_data(as_text=True)
    labels = [row[0] for row in rows(page)]
    assert labels[:5] == [
        "Signed in",
        "Signed out",
        "Changed password",
        "Signed in",
        "Signed out all other sessions",
    ]
    assert "Sessions ended 2" in page.replace("</dt><dd>", " ")
    assert "Signed out a session" in labels


def test_the_log_is_shown_only_to_its_owner(app, owner):
    stranger = factories.user()
    owner_browser = sign_in(app, owner, ip="198.51.100.7")
    stranger_browser = sign_in(app, stranger, ip="192.0.2.44")
    owner_page = owner_browser.get("/account/security").get_data(as_text=True)
    stranger_page = stranger_browser.get("/account/security").get_data(as_text=True)
    assert "198.51.100.7" in owner_page and "192.0.2.44" not in owner_page
    assert "192.0.2.44" in stranger_page and "198.51.100.7" not in stranger_page
    # There is no address for another account's log: the page reads the signed-in user only.
    assert (
        stranger_browser.get(f"/account/security?user_id={owner.id}").get_data(as_text=True).count("198.51.100.7") == 0
    )


def test_the_log_pages_newest_first(app, owner):
    for n in range(app.config["SECURITY_LOG_PER_PAGE"] + 4):
        security_log.record(owner, "signin.failure", ip=f"198.51.100.{n + 1}", user_agent=None)
        db.session.flush()
    db.session.commit()
    browser = sign_in(app, owner)
    first = browser.get("/account/security").get_data(as_text=True)
    assert len(rows(first)) == app.config["SECURITY_LOG_PER_PAGE"]
    assert rows(first)[0][0] == "Signed in"
    assert "Page 1 of 2" in first
    second = browser.get("/account/security?page=2").get_data(as_text=True)
    assert [row[1] for row in rows(second)] == [
        "198.51.100.5",
        "198.51.100.4",
        "198.51.100.3",
        "198.51.100.2",
        "198.51.100.1",
    ]
    assert browser.get("/account/security?page=junk").status_code == 200


def test_record_keeps_secrets_out_and_inputs_tidy(owner):
    for key in ("password", "new_password", "reset_token", "recovery_code", "otp", "secret"):
        with pytest.raises(security_log.SecretInDetail):
            security_log.record(owner, "password.reset", ip=None, user_agent=None, **{key: "x"})
    event = security_log.record(
        owner, "recovery_code.used", ip="not an address", user_agent="A" * 2000, remaining=7, method=None
    )
    db.session.flush()
    assert event.ip is None and len(event.user_agent) == 512
    assert event.detail == {"remaining": 7}
    assert security_log.label("recovery_code.used") == "Used a recovery code"
    assert security_log.label("something.new") == "something.new"


def test_an_empty_log_says_so(app, owner):
    browser = sign_in(app, owner)
    db.session.execute(sa.delete(SecurityEvent).where(SecurityEvent.user_id == owner.id))
    db.session.commit()
    assert "Nothing has happened on your account yet." in browser.get("/account/security").get_data(as_text=True)
