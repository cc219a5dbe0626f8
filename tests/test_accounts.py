"""Accounts over time: sign-in bookkeeping, deactivation, remember-me cookies and sign-in throttling."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

from portal.extensions import db
from portal.models import RateLimitTracking
from tests import factories

SESSION_COOKIE = "procode_session"
REMEMBER_COOKIE = "remember_token"


def _login(client, user, password=factories.PASSWORD, remember=False, ip=None):
    data = {"email": user.email, "password": password}
    if remember:
        data["remember"] = "y"
    environ = {"REMOTE_ADDR": ip} if ip else {}
    return client.post("/login", data=data, environ_base=environ)


def _signed_in(client, org) -> bool:
    response = client.get(f"/orgs/{org.slug}/keys/")
    if response.status_code == 200:
        return True
    assert response.status_code == 302 and "/login" in response.headers["Location"]
    return False


def test_sign_in_records_last_login(client, owner):
    assert owner.last_login_at is None
    before = datetime.now(UTC)
    assert _login(client, owner).status_code == 302
    db.session.refresh(owner)
    assert owner.last_login_at is not None and owner.last_login_at >= before


def test_failed_sign_in_does_not_touch_last_login(client, owner):
    assert _login(client, owner, password="wrong password!").status_code == 401
    db.session.refresh(owner)
    assert owner.last_login_at is None


def test_deactivated_user_is_refused_like_a_wrong_password(client, org, owner):
    other = factories.member(org, "developer")
    wrong = _login(client, other, password="wrong password!")
    owner.is_active = False
    db.session.commit()
    refused = _login(client, owner)  # the right password
    assert refused.status_code == wrong.status_code == 401
    assert "Invalid email or password." in refused.get_data(as_text=True)
    assert not _signed_in(client, org)
    db.session.refresh(owner)
    assert owner.last_login_at is None


def test_deactivating_a_user_ends_their_session(client, org, owner):
    assert _login(client, owner).status_code == 302
    assert _signed_in(client, org)
    owner.is_active = False
    db.session.commit()
    assert not _signed_in(client, org)


def test_remember_me_survives_losing_the_session_cookie(client, org, owner):
    assert _login(client, owner, remember=True).status_code == 302
    assert client.get_cookie(REMEMBER_COOKIE) is not None
    client.delete_cookie(SESSION_COOKIE)
    assert client.get_cookie(SESSION_COOKIE) is None
    assert _signed_in(client, org)


def test_without_remember_me_there_is_no_remember_cookie(client, org, owner):
    assert _login(client, owner).status_code == 302
    assert client.get_cookie(REMEMBER_COOKIE) is None
    assert _signed_in(client, org)
    client.delete_cookie(SESSION_COOKIE)
    assert not _signed_in(client, org)


def test_remember_cookie_stops_working_for_a_deactivated_user(client, org, owner):
    _login(client, owner, remember=True)
    client.delete_cookie(SESSION_COOKIE)
    owner.is_active = False
    db.session.commit()
    assert not _signed_in(client, org)


def test_failed_sign_ins_are_counted_in_the_database(client, owner):
    _login(client, owner, password="wrong password!", ip="198.51.100.7")
    buckets = db.session.scalars(sa.select(RateLimitTracking.bucket)).all()
    login_buckets = [b for b in buckets if b.startswith("login:")]
    assert login_buckets, buckets
    assert any(b.startswith("login:acct:") for b in login_buckets)
    assert any(b.startswith("login:ip:") and b.endswith("198.51.100.7") for b in login_buckets)
    assert owner.email not in " ".join(login_buckets)  # the account is hashed, not named
    counts = db.session.scalars(sa.select(RateLimitTracking.count).where(RateLimitTracking.bucket.in_(login_buckets)))
    assert set(counts) == {1}


def test_failures_from_many_addresses_lock_the_account(client, app, org, owner, monkeypatch):
    limit = 4
    monkeypatch.setitem(app.config, "LOGIN_MAX_FAILURES_PER_ACCOUNT_TOTAL", limit)
    for n in range(limit):
        response = _login(client, owner, password="wrong password!", ip=f"198.51.100.{n + 1}")
        assert response.status_code == 401
    # Even the right password, from an address never seen before, is refused for now.
    locked = _login(client, owner, ip="192.0.2.200")
    assert locked.status_code == 429
    assert "Too many failed sign-in attempts" in locked.get_data(as_text=True)
    assert not _signed_in(client, org)
    # Only that account: someone else signs in from the same new address.
    other = factories.member(org, "developer")
    assert _login(client, other, ip="192.0.2.200").status_code == 302
