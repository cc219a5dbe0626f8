"""Fixes from the security review. Each test fails on the code as it was before its fix."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import sqlalchemy as sa

from portal import create_app, trust_proxy
from portal.config import ConfigError
from portal.extensions import db
from portal.models import AuditEvent, Invitation, Membership, OutboxMail, RateLimitTracking, User
from tests import factories
from tests.mail_helpers import deliver, only_mail_to
from tests.scripts import ROOT

WRONG = "wrong password!"
ATTACKER = {"REMOTE_ADDR": "203.0.113.66"}
OWNER_HOME = {"REMOTE_ADDR": "198.51.100.10"}


def _login(client, user, password=factories.PASSWORD, **environ):
    return client.post("/login", data={"email": user.email, "password": password}, environ_base=environ or {})


# 1. Sign-in throttling that slows an attacker without locking the owner out --------------------------------


def test_an_attacker_on_one_address_cannot_lock_the_owner_out(app, client, owner):
    for _ in range(app.config["LOGIN_MAX_FAILURES_PER_ACCOUNT_TOTAL"] + 1):
        _login(client, owner, WRONG, **ATTACKER)
    assert _login(client, owner, **ATTACKER).status_code == 429  # the attacker's address is held …
    assert _login(app.test_client(), owner, **OWNER_HOME).status_code == 302  # … the owner's is not


def test_refused_attempts_do_not_count_again(app, client, owner):
    per_account = app.config["LOGIN_MAX_FAILURES_PER_ACCOUNT"]

    def account_counts() -> dict[str, int]:  # other tests' servers may have left committed rows of their own
        query = sa.select(RateLimitTracking.bucket, RateLimitTracking.count)
        rows = db.session.execute(query.where(RateLimitTracking.bucket.like("login:acct:%"))).all()
        return {bucket: count for bucket, count in rows}

    before = account_counts()
    for _ in range(per_account + 10):
        _login(client, owner, WRONG, **ATTACKER)
    grown = [count - before.get(bucket, 0) for bucket, count in account_counts().items() if count != before.get(bucket)]
    assert grown == [per_account]


def test_guessing_from_many_addresses_holds_new_devices_but_not_a_known_one(app, owner):
    known = app.test_client()
    assert _login(known, owner, **OWNER_HOME).status_code == 302  # sets the known-device cookie
    known.post("/logout")
    per_address = app.config["LOGIN_MAX_FAILURES_PER_ACCOUNT"]
    for n in range(app.config["LOGIN_MAX_FAILURES_PER_ACCOUNT_TOTAL"] // per_address):
        attacker = app.test_client()
        for _ in range(per_address):
            _login(attacker, owner, WRONG, REMOTE_ADDR=f"203.0.113.{n + 1}")
    assert _login(app.test_client(), owner, REMOTE_ADDR="192.0.2.1").status_code == 429  # a new device waits
    assert _login(known, owner, REMOTE_ADDR="192.0.2.2").status_code == 302  # the owner's browser gets in
    forged = app.test_client()
    forged.set_cookie(app.config["KNOWN_DEVICE_COOKIE"], f'["{owner.id}"].forged.signature')
    assert _login(forged, owner, REMOTE_ADDR="192.0.2.3").status_code == 429


# 2. Sign-up: throttled per address, and an existing address answered like a new one ------------------------


def test_sign_up_is_throttled_per_client_address(app, client):
    def sign_up(n, addr):
        data = {"display_name": f"Person {n}", "email": f"p{n}@example.com", "password": "a long enough password"}
        return app.test_client().post("/signup", data=data, environ_base={"REMOTE_ADDR": addr})

    assert [sign_up(n, "203.0.113.5").status_code for n in range(5)] == [302] * 5
    refused = sign_up(5, "203.0.113.5")
    assert refused.status_code == 429 and "Too many sign-ups" in refused.text
    assert sign_up(6, "203.0.113.6").status_code == 302
    assert db.session.scalar(sa.select(User).where(User.email == "p5@example.com")) is None


def test_sign_up_with_an_existing_address_looks_the_same_and_mails_its_owner(app, mail_server):
    existing = factories.user("taken@example.com", name="Taken Owner")
    data = {"display_name": "Someone", "password": "a long enough password"}
    new = app.test_client().post("/signup", data={**data, "email": "fresh@example.com"})
    taken = app.test_client()
    again = taken.post("/signup", data={**data, "email": "Taken@Example.com"})
    assert (new.status_code, new.headers["Location"]) == (again.status_code, again.headers["Location"])
    assert "Check your email" in taken.get(again.headers["Location"]).text
    assert "/login" in taken.get("/").headers["Location"]  # nobody was signed in
    received = deliver(mail_server)
    notice = only_mail_to(received, existing.email)
    assert "tried to sign up" in notice.message["Subject"] and "/password/forgot" in notice.part("plain")
    assert "/verify-email/" in only_mail_to(received, "fresh@example.com").part("plain")


# 3. Password change: the current password is guessed under the sign-in throttle -----------------------------


def test_password_change_cannot_guess_the_current_password_without_limit(app, client, auth, owner):
    auth.login(owner)
    data = {"new_password": "a brand new password", "confirm": "a brand new password"}
    for _ in range(app.config["LOGIN_MAX_FAILURES_PER_ACCOUNT"]):
        wrong = client.post("/account/password", data={**data, "current_password": "not my password"})
        assert wrong.status_code == 422
    held = client.post("/account/password", data={**data, "current_password": factories.PASSWORD})
    assert held.status_code == 429 and "Too many failed" in held.text


# 4. Weak passwords --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        ("aaaaaaaaaa", "are easy to guess"),
        ("password12", "This is a very common password"),
        ("weak.person@example.com", "Do not use your email address"),
        ("xweak.personx!", "Do not use your email address"),
    ],
)
def test_sign_up_refuses_weak_passwords_and_says_why(client, password, reason):
    data = {"display_name": "Weak Person", "email": "weak.person@example.com", "password": password}
    response = client.post("/signup", data=data)
    assert response.status_code == 422 and reason in response.text
    assert db.session.scalar(sa.select(User).where(User.email == "weak.person@example.com")) is None


def test_password_change_and_cli_refuse_weak_passwords(app, client, auth, owner):
    auth.login(owner)
    data = {"current_password": factories.PASSWORD, "new_password": "password12", "confirm": "password12"}
    response = client.post("/account/password", data=data)
    assert response.status_code == 422 and "very common password" in response.text
    result = app.test_cli_runner().invoke(args=["users", "create", "cli@example.com", "--password", "aaaaaaaaaa"])
    assert result.exit_code != 0 and "easy to guess" in result.output
    assert db.session.scalar(sa.select(User).where(User.email == "cli@example.com")) is None


def test_the_test_password_itself_passes_the_policy():
    from portal.password_policy import problem

    assert problem(factories.PASSWORD, email="user1@example.com", name="User 1") is None


# 5. Invitations carry no more than their inviter's current right ----------------------------------------------


def _owner_invite_link(client, org):
    page = client.post(f"/orgs/{org.slug}/invitations", data={"role": "owner"}).text
    return "/invite/" + page.split("/invite/")[1].split("<")[0].strip()


def test_an_owner_invite_from_a_since_demoted_owner_makes_nobody_owner(client, auth, org, owner):
    factories.member(org, "owner")  # so the inviter is not the last owner
    auth.login(owner)
    path = _owner_invite_link(client, org)
    auth.logout()
    db.session.execute(  # demoted by any path, even one that does not revoke the link
        sa.update(Membership).where(Membership.user_id == owner.id).values(role="admin")
    )
    db.session.commit()
    invitee = factories.user()
    auth.login(invitee)
    response = client.post(path)
    assert response.status_code == 409 and "can no longer grant this role" in response.text
    assert db.session.scalar(sa.select(Membership).filter_by(user_id=invitee.id)) is None


def test_demoting_an_owner_revokes_the_owner_invites_they_sent(client, auth, org, owner):
    co_owner = factories.member(org, "owner")
    auth.login(owner)
    _owner_invite_link(client, org)
    client.post(f"/orgs/{org.slug}/invitations", data={"role": "developer"})
    auth.logout()
    auth.login(co_owner)
    target = db.session.scalar(sa.select(Membership).filter_by(user_id=owner.id))
    assert client.post(f"/orgs/{org.slug}/members/{target.id}/role", data={"role": "admin"}).status_code == 302
    db.session.expire_all()
    state = {i.role: i.revoked_at is not None for i in db.session.scalars(sa.select(Invitation))}
    assert state == {"owner": True, "developer": False}  # an admin may still invite developers


# 6. Seed and secrets in production -------------------------------------------------------------------------


def test_seed_refuses_to_run_in_production(app, monkeypatch):
    monkeypatch.setitem(app.config, "ENV_NAME", "production")
    result = app.test_cli_runner().invoke(args=["seed"])
    assert result.exit_code != 0 and "PORTAL_ENV=development" in result.output
    assert "Demo owner" not in result.output
    assert db.session.scalar(sa.select(User).where(User.email == "demo@procode.dev")) is None


@pytest.mark.parametrize("short", ["SECRET_KEY", "API_KEY_PEPPER"])
def test_production_refuses_short_secrets(monkeypatch, short):
    monkeypatch.setenv("SECRET_KEY", "s" * 32)
    monkeypatch.setenv("API_KEY_PEPPER", "p" * 32)
    monkeypatch.setenv(short, "x" * 31)
    with pytest.raises(ConfigError, match=f"{short} must be at least 32 bytes"):
        create_app(env="production")


# 7. Headers -------------------------------------------------------------------------------------------------


def test_hsts_only_when_cookies_are_secure(app, client, monkeypatch):
    assert "Strict-Transport-Security" not in client.get("/login").headers  # plain-http test config
    monkeypatch.setitem(app.config, "SESSION_COOKIE_SECURE", True)
    assert client.get("/login").headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"


def test_permissions_policy_keeps_passkeys_and_drops_the_rest(client):
    policy = client.get("/login").headers["Permissions-Policy"]
    for feature in ("camera=()", "microphone=()", "geolocation=()", "payment=()", "usb=()"):
        assert feature in policy
    assert "publickey-credentials-get=(self)" in policy and "publickey-credentials-create=(self)" in policy


def test_signed_in_answers_and_csv_exports_are_never_cached(app, client, auth, org, owner, monkeypatch):
    auth.login(owner)
    export = client.get(f"/orgs/{org.slug}/usage.csv")
    assert export.status_code == 200 and export.mimetype == "text/csv"
    assert export.headers["Cache-Control"] == "no-store"
    monkeypatch.setattr(app, "debug", True)  # even where HTML caching is left alone
    assert client.get(f"/orgs/{org.slug}/keys/").headers["Cache-Control"] == "no-store"


# 8. Look-alike identities -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("email", "p\u0430ypal@example.com", "mixes letters from different alphabets"),
        ("email", "paypal@\u0435xample.com", "mixes letters from different alphabets"),
        ("display_name", "Admin\u202etxt.exe", "Invisible or control characters"),
        ("display_name", "Ali\u200bce", "Invisible or control characters"),
    ],
)
def test_sign_up_refuses_look_alike_identities(client, field, value, message):
    data = {"display_name": "Plain Name", "email": "plain@example.com", "password": "a long enough password"}
    response = client.post("/signup", data={**data, field: value})
    assert response.status_code == 422 and message in response.text


def test_organization_names_refuse_look_alikes(client, auth, org, owner):
    auth.login(owner)
    created = client.post("/orgs/new", data={"name": "\u0410cme"})  # Cyrillic А + Latin
    assert created.status_code == 422 and "mixes letters" in created.text
    renamed = client.post(f"/orgs/{org.slug}/settings", data={"name": "Acme\u202e"})
    assert renamed.status_code == 422 and "Invisible" in renamed.text
    assert client.post("/orgs/new", data={"name": "Ivan Иванов GmbH"}).status_code == 302  # scripts side by side


def test_addresses_are_stored_nfc_normalised(client):
    decomposed = "jose\u0301@example.com"
    data = {"display_name": "José", "email": decomposed, "password": "a long enough password"}
    assert client.post("/signup", data=data).status_code == 302
    assert db.session.scalar(sa.select(User.email).where(User.email == "jos\u00e9@example.com"))
    client.post("/logout")
    composed = {"email": "JOS\u00c9@example.com", "password": "a long enough password"}
    assert client.post("/login", data=composed).status_code == 302


# 9. A wrong password under gevent is one log line, not a traceback ------------------------------------------


def test_a_wrong_password_under_gevent_prints_no_traceback():
    script = textwrap.dedent(
        """
        from gevent import monkey
        monkey.patch_all()
        from portal import create_app
        from portal.security import hash_password, verify_password

        app = create_app({"SQLALCHEMY_DATABASE_URI": "postgresql://unused@127.0.0.1:1/x"}, env="testing")
        with app.app_context():
            stored = hash_password("the right password")
            results = [verify_password(stored, "a wrong password") for _ in range(3)]
            results.append(verify_password("not-an-argon2-hash", "anything"))
            results.append(verify_password(stored, "the right password"))
        print(results)
        """
    )
    out = subprocess.run(  # noqa: S603 - our own code, run with this interpreter
        [sys.executable, "-c", script], cwd=ROOT, env={**os.environ}, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[False, False, False, False, True]"
    assert "Traceback" not in out.stderr and "VerifyMismatchError" not in out.stderr


def test_a_failed_sign_in_is_one_log_line(client, owner, caplog):
    caplog.set_level("INFO", logger="portal.auth")
    _login(client, owner, WRONG)
    lines = [r for r in caplog.records if r.name == "portal.auth"]
    assert len(lines) == 1 and "sign-in failed" in lines[0].getMessage() and lines[0].exc_info is None
    assert owner.email not in lines[0].getMessage()


# 10. A forwarded address that is not an IP address ------------------------------------------------------------


@pytest.fixture
def behind_proxy(app):
    plain = app.wsgi_app
    trust_proxy(app)
    yield app
    app.wsgi_app = plain


def test_a_forwarded_address_that_is_not_an_ip_is_ignored(behind_proxy, client):
    data = {"display_name": "Proxied", "email": "proxied@example.com", "password": "a long enough password"}
    response = client.post("/signup", data=data, headers={"X-Forwarded-For": "not-an-ip"})
    assert response.status_code == 302
    event = db.session.scalar(sa.select(AuditEvent).where(AuditEvent.action == "org.created"))
    assert str(event.ip) == "127.0.0.1"  # the socket peer, not the junk


def test_a_forwarded_ip_address_is_used(behind_proxy, client):
    data = {"display_name": "Proxied", "email": "proxied2@example.com", "password": "a long enough password"}
    client.post("/signup", data=data, headers={"X-Forwarded-For": "203.0.113.9"})
    event = db.session.scalar(sa.select(AuditEvent).where(AuditEvent.action == "org.created"))
    assert str(event.ip) == "203.0.113.9"
    assert db.session.scalar(sa.select(sa.func.count()).select_from(OutboxMail)) == 1
