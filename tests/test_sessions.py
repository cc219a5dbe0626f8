"""Signed-in sessions held on the server: sign-out, revocation, lifetimes and the account's sessions page."""

from __future__ import annotations

import hashlib
import re
from datetime import timedelta

import sqlalchemy as sa
from werkzeug.http import parse_date

from portal.account import sessions
from portal.extensions import db
from portal.models import Organization, UserSession
from portal.timeutil import utcnow
from tests import factories

SESSION_COOKIE = "procode_session"
REMEMBER_COOKIE = "remember_token"
FIREFOX_LINUX = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
CHROME_WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36"
)
SAFARI_IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.5 Mobile/15E148 Safari/604.1"
)


def sign_in(app, user, *, remember=False, user_agent=None, ip=None, password=factories.PASSWORD):
    """A new browser, signed in as ``user``."""
    client = app.test_client()
    data = {"email": user.email, "password": password}
    if remember:
        data["remember"] = "y"
    environ = {"REMOTE_ADDR": ip} if ip else {}
    if user_agent:
        environ["HTTP_USER_AGENT"] = user_agent
    client.environ_base.update(environ)  # every later request from this "browser" carries them too
    assert client.post("/login", data=data).status_code == 302
    return client


def copy_cookies(source, *names):
    """A second browser holding copies of ``source``'s cookies (as a thief would)."""
    thief = source.application.test_client()
    for name in names:
        cookie = source.get_cookie(name)
        assert cookie is not None, name
        thief.set_cookie(name, cookie.value)
    return thief


def signed_in(client) -> bool:
    response = client.get("/account/sessions")
    if response.status_code == 200:
        return True
    assert response.status_code == 302 and "/login" in response.headers["Location"]
    return False


def session_of(user, user_agent):
    return db.session.scalar(
        sa.select(UserSession).where(UserSession.user_id == user.id, UserSession.user_agent == user_agent)
    )


def move(row, **deltas):
    """Move a session's timestamps into the past instead of waiting."""
    for column, delta in deltas.items():
        setattr(row, column, getattr(row, column) - delta)
    db.session.commit()


def test_sign_out_refuses_copied_session_and_remember_cookies(app, owner):
    browser = sign_in(app, owner, remember=True)
    both = copy_cookies(browser, SESSION_COOKIE, REMEMBER_COOKIE)
    remember_only = copy_cookies(browser, REMEMBER_COOKIE)
    session_only = copy_cookies(browser, SESSION_COOKIE)
    assert signed_in(both) and signed_in(remember_only) and signed_in(session_only)

    response = browser.post("/logout")
    assert response.status_code == 302
    assert any(c.startswith(f"{REMEMBER_COOKIE}=;") for c in response.headers.getlist("Set-Cookie"))
    assert not signed_in(browser)
    assert browser.get_cookie(REMEMBER_COOKIE) is None
    for copy in (both, remember_only, session_only):
        assert not signed_in(copy)
    row = db.session.scalar(sa.select(UserSession).where(UserSession.user_id == owner.id))
    assert row.revoked_at is not None and row.revoked_reason == "signout"


def test_remember_cookie_alone_signs_in_until_the_session_is_revoked(app, owner):
    kept = sign_in(app, owner, remember=True, user_agent=FIREFOX_LINUX)
    other = sign_in(app, owner, user_agent=CHROME_WINDOWS)
    kept.delete_cookie(SESSION_COOKIE)
    assert signed_in(kept)  # the remember-me cookie restored the session …
    assert kept.get_cookie(SESSION_COOKIE) is not None
    kept.delete_cookie(SESSION_COOKIE)
    assert signed_in(kept)  # … as often as the session cookie is lost

    assert other.post("/account/sessions/revoke-others").status_code == 302
    assert not signed_in(kept)
    assert signed_in(other)


def test_without_remember_me_losing_the_session_cookie_signs_out(app, owner):
    browser = sign_in(app, owner)
    assert browser.get_cookie(REMEMBER_COOKIE) is None
    browser.delete_cookie(SESSION_COOKIE)
    assert not signed_in(browser)


def test_the_cookies_hold_only_a_secret_whose_hash_is_stored(app, owner):
    browser = sign_in(app, owner, remember=True)
    secret = browser.get_cookie(REMEMBER_COOKIE).value.split("|")[0].removeprefix("s:")
    assert len(secret) >= 43  # 32 random bytes, base64url
    assert str(owner.id) not in browser.get_cookie(REMEMBER_COOKIE).value
    row = db.session.scalar(sa.select(UserSession).where(UserSession.user_id == owner.id))
    assert row.token_hash == hashlib.sha256(secret.encode()).digest()
    dump = db.session.execute(sa.text("SELECT to_jsonb(s)::text FROM user_sessions s")).scalars().all()
    assert not any(secret in line for line in dump)


def test_ids_that_are_not_a_live_session_load_no_one(owner):
    assert sessions.load_user(f"{owner.id}:sometoken") is None  # the format of cookies before sessions were rows
    assert sessions.load_user("s:") is None
    assert sessions.load_user("s:no-such-secret") is None


def test_idle_timeout_ends_a_session(app, owner):
    browser = sign_in(app, owner, user_agent=FIREFOX_LINUX)
    row = session_of(owner, FIREFOX_LINUX)
    move(row, last_seen_at=app.config["SESSION_IDLE_TIMEOUT"] - timedelta(minutes=1))
    assert signed_in(browser)  # idle for a minute less than the limit: still fine, and now seen again
    db.session.refresh(row)
    assert utcnow() - row.last_seen_at < timedelta(minutes=1)
    move(row, last_seen_at=app.config["SESSION_IDLE_TIMEOUT"] + timedelta(minutes=1))
    assert not signed_in(browser)


def test_a_remembered_session_has_the_longer_idle_timeout(app, owner):
    browser = sign_in(app, owner, remember=True, user_agent=FIREFOX_LINUX)
    browser.delete_cookie(SESSION_COOKIE)  # as a browser would after the session cookie's 12 hours
    row = session_of(owner, FIREFOX_LINUX)
    move(row, last_seen_at=app.config["SESSION_IDLE_TIMEOUT"] + timedelta(hours=1))
    assert signed_in(browser)
    move(row, last_seen_at=app.config["REMEMBER_IDLE_TIMEOUT"] + timedelta(minutes=1))
    assert not signed_in(browser)


def test_absolute_lifetime_ends_even_a_busy_session(app, owner):
    plain = sign_in(app, owner, user_agent=FIREFOX_LINUX)
    remembered = sign_in(app, owner, remember=True, user_agent=CHROME_WINDOWS)
    plain_row, remembered_row = session_of(owner, FIREFOX_LINUX), session_of(owner, CHROME_WINDOWS)
    assert plain_row.expires_at - plain_row.created_at == app.config["SESSION_MAX_AGE"] == timedelta(days=7)
    assert remembered_row.expires_at - remembered_row.created_at == app.config["REMEMBER_MAX_AGE"]
    # The remember-me cookie lasts exactly as long as the session it names.
    cookie_expiry = parse_date(remembered.get_cookie(REMEMBER_COOKIE).expires.strftime("%a, %d %b %Y %H:%M:%S GMT"))
    assert abs(cookie_expiry - remembered_row.expires_at) < timedelta(minutes=1)

    for row in (plain_row, remembered_row):  # signed in long ago, used a moment ago
        move(row, created_at=timedelta(days=31), expires_at=timedelta(days=31))
    assert not signed_in(plain)
    remembered.delete_cookie(SESSION_COOKIE)
    assert not signed_in(remembered)


def test_last_seen_is_written_at_most_once_a_minute(app, owner):
    browser = sign_in(app, owner, user_agent=FIREFOX_LINUX)
    row = session_of(owner, FIREFOX_LINUX)
    move(row, last_seen_at=timedelta(seconds=30))
    seen = row.last_seen_at
    updates = []

    def count(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("UPDATE USER_SESSIONS"):
            updates.append(statement)

    def requests(n):
        sa.event.listen(db.engine, "before_cursor_execute", count)
        try:
            for _ in range(n):
                assert signed_in(browser)
        finally:
            sa.event.remove(db.engine, "before_cursor_execute", count)
        db.session.refresh(row)

    requests(3)
    assert row.last_seen_at == seen and updates == []
    move(row, last_seen_at=timedelta(minutes=2))
    requests(3)
    assert utcnow() - row.last_seen_at < timedelta(seconds=10)
    assert len(updates) == 1


def test_account_page_lists_sessions_with_browser_os_and_this_session(app, owner):
    here = sign_in(app, owner, user_agent=FIREFOX_LINUX, ip="198.51.100.7")
    sign_in(app, owner, remember=True, user_agent=CHROME_WINDOWS, ip="203.0.113.9")
    sign_in(app, owner, user_agent=SAFARI_IPHONE, ip="2001:db8::1")
    stranger = factories.user()
    sign_in(app, stranger, user_agent="Stranger/1.0")

    page = here.get("/account/sessions").get_data(as_text=True)
    assert "Firefox 128</strong> on Ubuntu" in page
    assert "Chrome 126</strong> on Windows 10" in page
    assert "Mobile Safari 17</strong> on iOS 17" in page
    for address in ("198.51.100.7", "203.0.113.9", "2001:db8::1"):
        assert address in page
    assert page.count("This session") == 1
    current_row = re.search(r'<tr class="current-session">(.*?)</tr>', page, re.S).group(1)
    assert "Firefox 128" in current_row and "Sign out" not in current_row
    assert page.count("Kept signed in") == 1
    assert "Stranger" not in page  # another account's sessions are not listed
    assert page.count('/revoke"') == 2  # one button per other session


def test_nav_links_to_the_account_page(app, org, owner):
    page = sign_in(app, owner).get(f"/orgs/{org.slug}/keys/").get_data(as_text=True)
    assert re.search(rf'<a href="/account/sessions"[^>]*>{re.escape(owner.display_name)}</a>', page)


def test_signing_out_one_session_from_the_account_page(app, owner):
    here = sign_in(app, owner, user_agent=FIREFOX_LINUX)
    phone = sign_in(app, owner, user_agent=SAFARI_IPHONE)
    laptop = sign_in(app, owner, user_agent=CHROME_WINDOWS)
    target = session_of(owner, SAFARI_IPHONE)

    response = here.post(f"/account/sessions/{target.id}/revoke", follow_redirects=True)
    assert response.status_code == 200
    assert "That session is signed out." in response.get_data(as_text=True)
    assert "Mobile Safari" not in response.get_data(as_text=True)
    assert not signed_in(phone)
    assert signed_in(here) and signed_in(laptop)
    db.session.refresh(target)
    assert target.revoked_reason == "revoked"


def test_signing_out_this_session_from_the_account_page_signs_out(app, owner):
    here = sign_in(app, owner, user_agent=FIREFOX_LINUX)
    row = session_of(owner, FIREFOX_LINUX)
    response = here.post(f"/account/sessions/{row.id}/revoke")
    assert response.status_code == 302 and response.headers["Location"].endswith("/login")
    assert not signed_in(here)


def test_another_accounts_session_cannot_be_signed_out(app, owner):
    stranger = factories.user()
    theirs = sign_in(app, stranger, user_agent=CHROME_WINDOWS)
    mine = sign_in(app, owner)
    row = session_of(stranger, CHROME_WINDOWS)
    assert mine.post(f"/account/sessions/{row.id}/revoke").status_code == 404
    assert mine.post("/account/sessions/not-a-uuid/revoke").status_code == 404
    assert signed_in(theirs)
    db.session.refresh(row)
    assert row.revoked_at is None


def test_sign_out_all_other_sessions(app, owner):
    here = sign_in(app, owner, user_agent=FIREFOX_LINUX)
    others = [sign_in(app, owner, user_agent=CHROME_WINDOWS), sign_in(app, owner, remember=True)]
    stranger = sign_in(app, factories.user())

    response = here.post("/account/sessions/revoke-others", follow_redirects=True)
    assert "Signed out 2 other sessions." in response.get_data(as_text=True)
    assert signed_in(here) and signed_in(stranger)
    for other in others:
        assert not signed_in(other)
    page = here.get("/account/sessions").get_data(as_text=True)
    assert "Sign out all other sessions" not in page  # nothing left to sign out
    again = here.post("/account/sessions/revoke-others", follow_redirects=True)
    assert "no other sessions" in again.get_data(as_text=True)


def test_password_change_ends_the_others_but_not_this_one(app, owner):
    here = sign_in(app, owner, user_agent=FIREFOX_LINUX)
    remembered = sign_in(app, owner, remember=True, user_agent=CHROME_WINDOWS)
    thief = copy_cookies(remembered, REMEMBER_COOKIE)
    response = here.post(
        "/account/password",
        data={
            "current_password": factories.PASSWORD,
            "new_password": "a brand new password",
            "confirm": "a brand new password",
        },
    )
    assert response.status_code == 302
    assert signed_in(here)
    assert not signed_in(remembered) and not signed_in(thief)
    assert session_of(owner, CHROME_WINDOWS).revoked_reason == "password.changed"
    assert session_of(owner, FIREFOX_LINUX).revoked_at is None


def test_a_revoked_session_cannot_post(app, owner):
    browser = sign_in(app, owner)
    copy = copy_cookies(browser, SESSION_COOKIE)
    browser.post("/logout")
    response = copy.post("/orgs/new", data={"name": "Made with a stolen cookie"})
    assert response.status_code == 302 and "/login" in response.headers["Location"]
    assert copy.post("/account/sessions/revoke-others").status_code == 302
    assert db.session.scalar(sa.select(Organization).where(Organization.name == "Made with a stolen cookie")) is None


def _csrf_token(client, path):
    page = client.get(path).get_data(as_text=True)
    return re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)


def test_account_posts_need_the_csrf_token(csrf_app, owner):
    browsers = []
    for _ in range(2):
        browser = csrf_app.test_client()
        data = {"email": owner.email, "password": factories.PASSWORD, "csrf_token": _csrf_token(browser, "/login")}
        assert browser.post("/login", data=data).status_code == 302
        browsers.append(browser)
    here, other = browsers
    token = _csrf_token(here, "/account/sessions")
    other_row = db.session.scalars(sa.select(UserSession).where(UserSession.user_id == owner.id)).first()
    assert here.post("/account/sessions/revoke-others").status_code == 400
    assert here.post(f"/account/sessions/{other_row.id}/revoke").status_code == 400
    assert signed_in(other)
    assert here.post("/account/sessions/revoke-others", data={"csrf_token": token}).status_code == 302
    assert not signed_in(other) and signed_in(here)


def test_end_all_sessions_ends_every_session_of_that_user_only(app, owner):
    browsers = [sign_in(app, owner), sign_in(app, owner, remember=True)]
    stranger = sign_in(app, factories.user())
    assert sessions.end_all_sessions(owner, "password.reset") == 2
    db.session.commit()
    assert not any(signed_in(b) for b in browsers)
    assert signed_in(stranger)
    assert sessions.end_all_sessions(owner, "password.reset") == 0  # already ended: nothing to count


def test_the_account_pages_need_sign_in(client):
    for path in ("/account/", "/account/sessions", "/account/security"):
        response = client.get(path)
        assert response.status_code == 302 and "/login" in response.headers["Location"]


def test_support_can_sign_an_account_out_everywhere(app, owner):
    browsers = [sign_in(app, owner), sign_in(app, owner, remember=True)]
    result = app.test_cli_runner().invoke(args=["users", "sign-out", owner.email.upper()])
    assert result.exit_code == 0, result.output
    assert "signed out 2 sessions" in result.output
    assert not any(signed_in(b) for b in browsers)
    page = sign_in(app, owner).get("/account/security").get_data(as_text=True)
    assert "All sessions were signed out" in page
    missing = app.test_cli_runner().invoke(args=["users", "sign-out", "nobody@example.com"])
    assert missing.exit_code != 0 and "no account" in missing.output


def test_ended_sessions_are_pruned_after_a_while(app, owner):
    live = sign_in(app, owner, user_agent=FIREFOX_LINUX)
    sign_in(app, owner, user_agent=CHROME_WINDOWS).post("/logout")
    sign_in(app, owner, user_agent=SAFARI_IPHONE)
    move(session_of(owner, CHROME_WINDOWS), revoked_at=timedelta(days=31))
    move(session_of(owner, SAFARI_IPHONE), last_seen_at=timedelta(days=31))
    result = app.test_cli_runner().invoke(args=["users", "prune-sessions"])
    assert result.exit_code == 0 and "deleted 2 ended sessions" in result.output
    remaining = db.session.scalars(sa.select(UserSession.user_agent).where(UserSession.user_id == owner.id)).all()
    assert remaining == [FIREFOX_LINUX]
    assert signed_in(live)


def test_a_session_opened_after_a_second_factor_says_so(owner):
    row = sessions.open_session(owner, remember=False, ip="198.51.100.7", user_agent=None, second_factor=True)
    assert row.second_factor_done_at is not None
    plain = sessions.open_session(owner, remember=False, ip=None, user_agent=None)
    assert plain.second_factor_done_at is None
    assert sessions.load_user(owner.get_id()).current_session.id == plain.id


def test_the_current_session_is_listed_first_then_the_most_recently_used(app, owner):
    here = sign_in(app, owner, user_agent=FIREFOX_LINUX)
    sign_in(app, owner, user_agent=CHROME_WINDOWS)
    sign_in(app, owner, user_agent=SAFARI_IPHONE)
    # This browser signed in first and was not used since: it still comes first, then the phone, then Chrome.
    move(session_of(owner, CHROME_WINDOWS), last_seen_at=timedelta(seconds=40))

    page = here.get("/account/sessions").get_data(as_text=True)
    devices = re.findall(r"<strong>([^<]+)</strong> on ", page)
    assert devices == ["Firefox 128", "Mobile Safari 17", "Chrome 126"]
    assert re.search(r'<tr class="current-session">\s*<td><strong>Firefox 128', page)
