"""Two-factor sign-in with an authenticator app and recovery codes: enrolment, the sign-in step, reuse,
throttling, turning it off, and the organization and staff requirements."""

from __future__ import annotations

import hashlib
import json
import re
import urllib.parse
from datetime import timedelta

import pytest
import sqlalchemy as sa
from flask import Flask

from portal import mail
from portal.extensions import db
from portal.models import AuditEvent, Passkey, RecoveryCode, TotpCredential
from portal.timeutil import utcnow
from portal.twofactor import sealing
from portal.twofactor.routes import NEW_RECOVERY_CODES
from tests import factories
from tests.twofactor_helpers import code_at, enrol, next_step_code, recovery_codes, setup_key

CHALLENGE = "/login/two-factor"


def _signed_in(client) -> bool:
    return client.get("/account/two-factor/").status_code == 200


def _sign_in_with_password(client, user, next_url: str | None = None):
    url = "/login" + (f"?next={urllib.parse.quote(next_url)}" if next_url else "")
    return client.post(url, data={"email": user.email, "password": factories.PASSWORD})


def test_enrolment_refuses_a_wrong_code_then_turns_on_with_the_right_one(client, auth, owner):
    auth.login(owner)
    page = client.get("/account/two-factor/app")
    html = page.get_data(as_text=True)
    secret = setup_key(html)
    assert len(secret) == 32

    wrong = client.post(
        "/account/two-factor/app", data={"code": "000000" if code_at(secret, utcnow()) != "000000" else "111111"}
    )
    assert wrong.status_code == 422 and "does not match" in wrong.get_data(as_text=True)
    assert db.session.get(TotpCredential, owner.id) is None
    assert setup_key(wrong.get_data(as_text=True)) == secret  # the same secret until it is confirmed

    right = client.post("/account/two-factor/app", data={"code": code_at(secret, utcnow())}, follow_redirects=True)
    assert right.status_code == 200 and right.request.path == "/account/two-factor/recovery-codes/new"
    codes = recovery_codes(right.get_data(as_text=True))
    assert len(codes) == 10 and len(set(codes)) == 10
    credential = db.session.get(TotpCredential, owner.id)
    assert credential is not None and secret.encode() not in credential.secret_sealed
    assert sealing.unseal(credential.secret_sealed) == secret
    stored = db.session.scalars(sa.select(RecoveryCode.code_hash).where(RecoveryCode.user_id == owner.id)).all()
    assert len(stored) == 10 and not any(code.encode() in digest for code in codes for digest in stored)
    assert "On" in client.get("/account/two-factor/").get_data(as_text=True)
    assert client.get("/account/two-factor/app").status_code == 302  # set up once


def test_the_qr_code_is_an_svg_drawn_by_the_portal(client, auth, owner):
    auth.login(owner)
    response = client.get("/account/two-factor/app")
    html = response.get_data(as_text=True)
    src = html.split('alt="QR code for your authenticator app"')[0].rsplit('src="', 1)[1].split('"')[0]
    assert src.startswith("data:image/svg+xml")
    svg = urllib.parse.unquote(src.split(",", 1)[1])
    assert "<svg" in svg and "<path" in svg
    assert "img-src 'self' data:" in response.headers["Content-Security-Policy"]
    assert "otpauth://" not in html and "chart.googleapis" not in html  # the secret leaves only inside the image


def test_sign_in_requires_the_code_after_the_password(client, auth, owner, org):
    auth.login(owner)
    secret, _ = enrol(client)
    auth.logout()

    response = _sign_in_with_password(client, owner, next_url=f"/orgs/{org.slug}/audit")
    assert response.status_code == 302 and response.headers["Location"].endswith(CHALLENGE)
    assert not _signed_in(client)  # the password alone signs no one in
    assert client.get(f"/orgs/{org.slug}/keys/").status_code == 302

    page = client.get(CHALLENGE)
    assert page.status_code == 200 and "Authentication code" in page.get_data(as_text=True)
    done = client.post(CHALLENGE, data={"code": next_step_code(secret)})
    assert done.status_code == 302 and done.headers["Location"].endswith(f"/orgs/{org.slug}/audit")
    assert _signed_in(client)


def test_a_code_cannot_be_used_twice(client, auth, owner):
    auth.login(owner)
    secret, _ = enrol(client)
    auth.logout()
    code = next_step_code(secret)
    _sign_in_with_password(client, owner)
    assert client.post(CHALLENGE, data={"code": code}).status_code == 302
    auth.logout()

    _sign_in_with_password(client, owner)
    again = client.post(CHALLENGE, data={"code": code})
    assert again.status_code == 401 and "not valid" in again.get_data(as_text=True)
    assert not _signed_in(client)
    # Nor the code of the enrolment step, which came before it.
    assert client.post(CHALLENGE, data={"code": code_at(secret, utcnow())}).status_code == 401


def test_wrong_codes_are_throttled_per_account(client, auth, owner):
    auth.login(owner)
    secret, _ = enrol(client)
    auth.logout()
    _sign_in_with_password(client, owner)
    right = next_step_code(secret)
    wrong = "123456" if right != "123456" else "654321"
    for _ in range(5):
        assert client.post(CHALLENGE, data={"code": wrong}).status_code == 401
    throttled = client.post(CHALLENGE, data={"code": right})
    assert throttled.status_code == 429 and "Too many wrong codes" in throttled.get_data(as_text=True)
    assert not _signed_in(client)


def test_recovery_codes_work_once_each_and_can_be_regenerated(client, auth, owner):
    auth.login(owner)
    secret, codes = enrol(client)
    auth.logout()

    _sign_in_with_password(client, owner)
    used = client.post(CHALLENGE, data={"code": codes[0].upper().replace("-", " ")}, follow_redirects=True)
    assert "9 left" in used.get_data(as_text=True) and _signed_in(client)
    auth.logout()
    _sign_in_with_password(client, owner)
    assert client.post(CHALLENGE, data={"code": codes[0]}).status_code == 401  # used up
    assert client.post(CHALLENGE, data={"code": codes[1]}).status_code == 302

    wrong = client.post("/account/two-factor/recovery-codes", data={"confirmation": "not my password"})
    assert wrong.status_code == 422 and "neither your password" in wrong.get_data(as_text=True)
    fresh = client.post(
        "/account/two-factor/recovery-codes", data={"confirmation": factories.PASSWORD}, follow_redirects=True
    )
    new_codes = recovery_codes(fresh.get_data(as_text=True))
    assert fresh.status_code == 200 and len(new_codes) == 10 and not set(new_codes) & set(codes)
    auth.logout()
    _sign_in_with_password(client, owner)
    assert client.post(CHALLENGE, data={"code": codes[2]}).status_code == 401  # the old set is gone
    assert client.post(CHALLENGE, data={"code": new_codes[0]}).status_code == 302


def test_a_pending_sign_in_expires_after_five_minutes(client, auth, owner, monkeypatch):
    auth.login(owner)
    secret, _ = enrol(client)
    auth.logout()
    _sign_in_with_password(client, owner)
    later = utcnow() + timedelta(minutes=5, seconds=1)
    monkeypatch.setattr("portal.twofactor.pending.utcnow", lambda: later)
    expired = client.post(CHALLENGE, data={"code": next_step_code(secret)})
    assert expired.status_code == 302 and expired.headers["Location"].endswith("/login")
    assert not _signed_in(client)


def test_turning_off_needs_the_password_ends_other_sessions_and_is_mailed(app: Flask, client, auth, owner, mail_server):
    auth.login(owner)
    enrol(client)
    mail.send_due()
    [enabled] = mail_server.received
    assert enabled.message["Subject"] == "Two-factor authentication is on for your ProCode account"
    other = app.test_client()
    other.post("/login", data={"email": owner.email, "password": factories.PASSWORD})
    assert not _signed_in(other)  # needs its code, so sign it in with a recovery code instead
    codes = recovery_codes(
        client.post(
            "/account/two-factor/recovery-codes", data={"confirmation": factories.PASSWORD}, follow_redirects=True
        ).get_data(as_text=True)
    )
    assert other.post(CHALLENGE, data={"code": codes[0]}).status_code == 302 and _signed_in(other)

    refused = client.post("/account/two-factor/disable", data={"confirmation": "wrong password!"})
    assert refused.status_code == 422 and db.session.get(TotpCredential, owner.id) is not None
    assert client.post("/account/two-factor/disable", data={"confirmation": ""}).status_code == 422

    off = client.post("/account/two-factor/disable", data={"confirmation": factories.PASSWORD}, follow_redirects=True)
    assert "Two-factor authentication is off" in off.get_data(as_text=True)
    assert db.session.get(TotpCredential, owner.id) is None
    assert db.session.scalar(sa.select(sa.func.count()).where(RecoveryCode.user_id == owner.id)) == 0
    assert _signed_in(client) and not _signed_in(other)
    mail.send_due()
    disabled = mail_server.received[-1]
    assert disabled.message["Subject"] == "Two-factor authentication was turned off for your ProCode account"
    assert disabled.rcpt_tos == [owner.email] and "/account/two-factor/" in disabled.part("plain")

    auth.logout()
    assert _sign_in_with_password(client, owner).headers["Location"].endswith("/")  # the password alone again


def test_turning_off_with_a_current_code(client, auth, owner):
    auth.login(owner)
    secret, _ = enrol(client)
    reused = client.post("/account/two-factor/disable", data={"confirmation": code_at(secret, utcnow())})
    assert reused.status_code == 422  # the enrolment code was used already
    response = client.post("/account/two-factor/disable", data={"confirmation": next_step_code(secret)})
    assert response.status_code == 302 and db.session.get(TotpCredential, owner.id) is None


def test_removing_the_last_passkey_turns_two_factor_off(client, auth, owner, mail_server):
    passkey = Passkey(user_id=owner.id, name="Laptop", credential_id=b"cred-1", public_key=b"key")
    db.session.add(passkey)
    db.session.commit()
    auth.login(owner)
    assert not _signed_in(client)  # a passkey alone makes sign-in ask for a second factor
    assert "data-passkey-get" in client.get(CHALLENGE).get_data(as_text=True)
    # Finish signing in with a recovery code (the browser tests sign in with a real passkey).
    db.session.add(RecoveryCode(user_id=owner.id, code_hash=hashlib.sha256(b"abcdefghjkmn").digest()))
    db.session.commit()
    assert client.post(CHALLENGE, data={"code": "abcd-efgh-jkmn"}).status_code == 302
    page = client.get(f"/account/two-factor/passkeys/{passkey.id}/remove")
    assert page.status_code == 200 and "Laptop" in page.get_data(as_text=True)
    assert (
        client.post(
            f"/account/two-factor/passkeys/{passkey.id}/remove", data={"confirmation": "nope nope nope"}
        ).status_code
        == 422
    )
    done = client.post(f"/account/two-factor/passkeys/{passkey.id}/remove", data={"confirmation": factories.PASSWORD})
    assert done.status_code == 302
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Passkey).where(Passkey.user_id == owner.id)) == 0
    mail.send_due()
    assert [m.message["Subject"] for m in mail_server.received] == [
        "Two-factor authentication was turned off for your ProCode account"
    ]
    assert client.get("/account/two-factor/passkeys/not-a-uuid/remove").status_code == 404


def test_an_organization_can_require_two_factor_of_its_members(client, auth, org, owner, member):
    other = factories.org()
    factories.member(other, "developer", member)

    auth.login(owner)
    refused = client.post(f"/orgs/{org.slug}/settings/two-factor", data={"require": "y"}, follow_redirects=True)
    assert "for your own account first" in refused.get_data(as_text=True)
    enrol(client)
    assert client.post(f"/orgs/{org.slug}/settings/two-factor", data={"require": "y"}).status_code == 302
    db.session.refresh(org)
    assert org.require_two_factor
    event = db.session.scalar(sa.select(AuditEvent).where(AuditEvent.action == "org.two_factor_required"))
    assert event is not None and event.organization_id == org.id and event.actor_id == owner.id
    assert "checked" in client.get(f"/orgs/{org.slug}/settings").get_data(as_text=True)
    auth.logout()

    auth.login(member)
    blocked = client.get(f"/orgs/{org.slug}/keys/")
    assert blocked.status_code == 302 and blocked.headers["Location"].endswith(f"/account/two-factor/?org={org.slug}")
    page = client.get(blocked.headers["Location"]).get_data(as_text=True)
    assert f"{org.name} requires two-factor authentication" in page
    assert client.get(f"/orgs/{org.slug}/audit").status_code == 302
    assert client.post(f"/orgs/{org.slug}/keys/new", data={"name": "x", "environment": "test"}).status_code == 302
    assert client.get(f"/orgs/{other.slug}/keys/").status_code == 200  # other organizations are unaffected
    assert client.get("/orgs/no-such-org/keys/").status_code == 404  # and strangers learn nothing

    enrol(client)
    assert client.get(f"/orgs/{org.slug}/keys/").status_code == 200


def test_staff_need_two_factor_when_the_flag_is_on(app: Flask, client, auth, staff, member):
    app.config["STAFF_REQUIRE_TWO_FACTOR"] = True
    try:
        auth.login(staff)
        response = client.get("/staff/")
        assert response.status_code == 302 and response.headers["Location"].endswith("/account/two-factor/")
        assert "Staff need two-factor" in client.get("/account/two-factor/").get_data(as_text=True)
        enrol(client)
        assert client.get("/staff/").status_code == 200
        auth.logout()
        auth.login(member)
        assert client.get("/staff/").status_code == 404  # the area stays hidden from everyone else
    finally:
        app.config["STAFF_REQUIRE_TWO_FACTOR"] = False


def test_staff_without_two_factor_reach_staff_pages_when_the_flag_is_off(client, auth, staff):
    auth.login(staff)
    assert client.get("/staff/").status_code == 200


def test_the_flag_is_on_in_production_and_off_in_development_and_tests(app):
    from portal.config import Config, DevConfig, TestConfig

    assert Config.STAFF_REQUIRE_TWO_FACTOR and not DevConfig.STAFF_REQUIRE_TWO_FACTOR
    assert not TestConfig.STAFF_REQUIRE_TWO_FACTOR and not app.config["STAFF_REQUIRE_TWO_FACTOR"]


def test_creating_staff_on_the_command_line_mentions_two_factor(app):
    output = (
        app.test_cli_runner()
        .invoke(args=["users", "create", "ops2fa@example.com", "--staff", "--password", "a long password"])
        .output
    )
    assert "two-factor" in output and "/account/two-factor" in output


@pytest.mark.parametrize(
    ("path", "data"),
    [
        ("/account/two-factor/app", {"code": ""}),
        ("/account/two-factor/app", {"code": "9" * 500}),
        ("/account/two-factor/app", {"code": "not a code"}),
        ("/account/two-factor/passkeys/new", {"name": "", "credential": ""}),
        ("/account/two-factor/passkeys/new", {"name": "Laptop", "credential": "{not json"}),
        ("/account/two-factor/passkeys/new", {"name": "Laptop", "credential": '{"id": 5}'}),
        ("/account/two-factor/passkeys/new", {"name": "Laptop", "credential": "[" * 20000}),
        ("/account/two-factor/passkeys/new", {"name": "x" * 61, "credential": "{}"}),
    ],
)
def test_bad_input_on_the_settings_forms_is_a_form_error(client, auth, owner, path, data):
    auth.login(owner)
    client.get(path)
    response = client.post(path, data=data)
    assert response.status_code == 422
    assert 'class="error' in response.get_data(as_text=True)


@pytest.mark.parametrize(
    ("path", "data"),
    [
        ("/account/two-factor/disable", {"confirmation": ""}),
        ("/account/two-factor/disable", {"confirmation": "x" * 500}),
        ("/account/two-factor/recovery-codes", {"confirmation": "123456"}),
        ("/account/two-factor/app/remove", {"confirmation": "zzzz"}),
    ],
)
def test_bad_confirmations_are_form_errors(client, auth, owner, path, data):
    auth.login(owner)
    enrol(client)
    response = client.post(path, data=data)
    assert response.status_code == 422 and 'class="error' in response.get_data(as_text=True)
    assert db.session.get(TotpCredential, owner.id) is not None


@pytest.mark.parametrize(
    ("path", "data", "status"),
    [
        (CHALLENGE, {"code": ""}, 422),
        (CHALLENGE, {"code": "1" * 65}, 422),
        (CHALLENGE, {"code": "12345"}, 401),
        (CHALLENGE + "/passkey", {"credential": ""}, 422),
        (CHALLENGE + "/passkey", {"credential": "garbage"}, 401),
        (
            CHALLENGE + "/passkey",
            {"credential": '{"id": "a", "rawId": "a", "response": {}, "type": "public-key"}'},
            401,
        ),
    ],
)
def test_bad_input_at_the_sign_in_step_is_a_form_error(client, auth, owner, path, data, status):
    auth.login(owner)
    enrol(client)
    db.session.add(Passkey(user_id=owner.id, name="Key", credential_id=b"cred-2", public_key=b"key"))
    db.session.commit()
    auth.logout()
    _sign_in_with_password(client, owner)
    client.get(CHALLENGE)
    response = client.post(path, data=data)
    assert response.status_code == status
    assert 'class="error' in response.get_data(as_text=True)
    assert not _signed_in(client)


def test_the_sign_in_step_without_a_password_first_goes_back_to_sign_in(client):
    assert client.get(CHALLENGE).headers["Location"].endswith("/login")
    assert client.post(CHALLENGE + "/passkey", data={"credential": "{}"}).headers["Location"].endswith("/login")


def test_passkey_options_name_the_configured_relying_party(app: Flask, client, auth, owner):
    import json
    from html import unescape

    auth.login(owner)
    app.config["WEBAUTHN_RP_ID"] = "portal.example"
    try:
        html = client.get("/account/two-factor/passkeys/new").get_data(as_text=True)
    finally:
        app.config["WEBAUTHN_RP_ID"] = None
    options = json.loads(unescape(html.split('data-options="', 1)[1].split('"', 1)[0]))
    assert options["rp"]["id"] == "portal.example" and options["user"]["name"] == owner.email
    assert 'src="/static/js/passkeys.js"' in html and "<script>" not in html


def test_the_totp_secret_is_sealed_with_a_key_from_secret_key(app: Flask):
    sealed = sealing.seal("JBSWY3DPEHPK3PXP")
    assert b"JBSWY3DPEHPK3PXP" not in sealed and sealing.unseal(sealed) == "JBSWY3DPEHPK3PXP"
    saved = app.config["SECRET_KEY"]
    app.config["SECRET_KEY"] = "another-secret-key"
    try:
        with pytest.raises(sealing.Unsealable):
            sealing.unseal(sealed)
    finally:
        app.config["SECRET_KEY"] = saved


def test_after_secret_key_changes_app_codes_are_refused_and_a_recovery_code_lets_the_owner_set_it_up_again(
    app: Flask, client, auth, owner
):
    auth.login(owner)
    secret, codes = enrol(client)
    auth.logout()
    saved = app.config["SECRET_KEY"]
    app.config["SECRET_KEY"] = "a-rotated-secret-key-of-enough-bytes"
    try:
        _sign_in_with_password(client, owner)
        refused = client.post(CHALLENGE, data={"code": next_step_code(secret)})
        assert refused.status_code == 401
        assert "That code is not valid" in refused.get_data(as_text=True)
        assert client.post(CHALLENGE, data={"code": codes[0]}).status_code == 302
        removed = client.post("/account/two-factor/app/remove", data={"confirmation": factories.PASSWORD})
        assert removed.status_code == 302
        assert db.session.get(TotpCredential, owner.id) is None
        assert client.get("/account/two-factor/app").status_code == 200  # set up again, under the new key
    finally:
        app.config["SECRET_KEY"] = saved


def test_keep_me_signed_in_carries_over_the_second_step(client, auth, owner):
    auth.login(owner)
    secret, _ = enrol(client)
    auth.logout()
    client.post("/login", data={"email": owner.email, "password": factories.PASSWORD, "remember": "y"})
    assert client.get_cookie("remember_token") is None  # nothing that signs in before the code
    client.post(CHALLENGE, data={"code": next_step_code(secret)})
    assert client.get_cookie("remember_token") is not None


def test_two_factor_changes_and_checks_are_in_the_security_log_and_mark_the_session(client, auth, owner):
    from portal.models import UserSession

    auth.login(owner)
    _, codes = enrol(client)
    auth.logout()
    _sign_in_with_password(client, owner)
    assert client.post(CHALLENGE, data={"code": "000000"}).status_code == 401
    assert client.post(CHALLENGE, data={"code": codes[0]}).status_code == 302
    latest = db.session.scalars(
        sa.select(UserSession).where(UserSession.user_id == owner.id).order_by(UserSession.created_at.desc())
    ).first()
    assert latest is not None and latest.second_factor_done_at is not None
    log = client.get("/account/security").get_data(as_text=True)
    for line in ("Turned on two-factor authentication", "Failed two-factor check", "Used a recovery code"):
        assert line in log


def _account_link_is_current(html: str) -> bool:
    return bool(re.search(r'<a href="/account/sessions"[^>]*aria-current="page"', html))


def test_the_two_factor_pages_are_account_pages(client, auth, owner):
    auth.login(owner)
    off = client.get("/account/two-factor/").get_data(as_text=True)
    assert "<h1>Your account</h1>" in off and _account_link_is_current(off)
    assert re.search(r'<a href="/account/two-factor/" aria-current="page">Two-factor</a>', off)
    assert "Two-factor authentication is off" in off
    assert re.search(r'<span class="badge[^"]*" id="two-factor-state">Off</span>', off)
    setup = client.get("/account/two-factor/app").get_data(as_text=True)
    assert "<h1>Your account</h1>" in setup and _account_link_is_current(setup)
    assert re.search(r'<a href="/account/two-factor/" aria-current="page">Two-factor</a>', setup)
    secret, _ = enrol(client)
    on = client.get("/account/two-factor/").get_data(as_text=True)
    assert "Two-factor authentication is on" in on
    assert re.search(r'<span class="badge[^"]*" id="two-factor-state">On</span>', on)
    for path in ("/account/two-factor/recovery-codes", "/account/two-factor/disable"):
        page = client.get(path).get_data(as_text=True)
        assert "<h1>Your account</h1>" in page and _account_link_is_current(page), path

    auth.logout()
    _sign_in_with_password(client, owner)
    step = client.get(CHALLENGE).get_data(as_text=True)  # the sign-in step is no account page
    assert "Your account" not in step and not _account_link_is_current(step)


def test_new_recovery_codes_are_shown_once_after_a_redirect(app: Flask, client, auth, owner):
    auth.login(owner)
    enrol(client)
    posted = client.post("/account/two-factor/recovery-codes", data={"confirmation": factories.PASSWORD})
    assert posted.status_code == 302 and posted.headers["Location"] == "/account/two-factor/recovery-codes/new"
    cookie = client.get_cookie(app.config["SESSION_COOKIE_NAME"])
    assert cookie is not None
    kept = app.session_interface.get_signing_serializer(app).loads(cookie.value)  # type: ignore[attr-defined]

    shown = client.get("/account/two-factor/recovery-codes/new")
    html = shown.get_data(as_text=True)
    assert shown.status_code == 200 and "New recovery codes. The old ones no longer work." in html
    codes = recovery_codes(html)
    assert len(codes) == 10
    assert not any(code in str(kept) for code in codes)  # sealed while they wait in the session cookie

    again = client.get("/account/two-factor/recovery-codes/new", follow_redirects=True)
    html = again.get_data(as_text=True)
    assert again.request.path == "/account/two-factor/" and "shown only once" in html
    assert not any(code in html for code in codes)


def test_only_sealed_codes_kept_for_this_account_are_shown(app: Flask, client, auth, owner):
    """Signing in and out clears the session; this is the check behind it, for a cookie that somehow kept them."""
    auth.login(owner)
    stranger = factories.user()
    with app.test_request_context():
        for_stranger = sealing.seal(json.dumps({"user": str(stranger.id), "codes": ["aaaa-bbbb-cccc"], "message": "m"}))
        for_owner = sealing.seal(json.dumps({"user": str(owner.id), "codes": ["aaaa-bbbb-cccc"], "message": "m"}))
    for kept in (for_stranger.decode(), "not sealed", for_owner.decode()[:-4]):
        with client.session_transaction() as session:
            session[NEW_RECOVERY_CODES] = kept
        answer = client.get("/account/two-factor/recovery-codes/new")
        assert answer.status_code == 302 and answer.headers["Location"] == "/account/two-factor/"
    with client.session_transaction() as session:
        session[NEW_RECOVERY_CODES] = for_owner.decode()
    assert "aaaa-bbbb-cccc" in client.get("/account/two-factor/recovery-codes/new").get_data(as_text=True)
