"""Two-factor sessions, pending account links, the outbox and request bodies: behaviour around the security
features that a member, an attacker with the password, or staff would notice."""

from __future__ import annotations

import sqlalchemy as sa

from portal.extensions import db
from portal.models import AccountToken, TotpCredential, UserSession
from portal.timeutil import utcnow
from portal.twofactor import sealing
from tests import factories
from tests.twofactor_helpers import code_at, enrol, next_step_code, setup_key


def _login(client, user):
    return client.post("/login", data={"email": user.email, "password": factories.PASSWORD})


def _signed_in(client) -> bool:
    return client.get("/account/sessions").status_code == 200


def _sessions_of(user) -> list[UserSession]:
    return list(db.session.scalars(sa.select(UserSession).where(UserSession.user_id == user.id)))


def _totp_behind_the_sessions_back(user) -> str:
    """Two-factor turned on without going through enrolment (as for a session opened before this release)."""
    secret = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
    db.session.add(TotpCredential(user_id=user.id, secret_sealed=sealing.seal(secret)))
    db.session.commit()
    return secret


def _pending_links(user) -> list[str]:
    return list(
        db.session.scalars(
            sa.select(AccountToken.purpose).where(AccountToken.user_id == user.id, AccountToken.used_at.is_(None))
        )
    )


# Two-factor: enrolment and sessions ----------------------------------------------------------------------------


def test_turning_two_factor_on_signs_out_other_sessions_and_counts_for_this_one(app, client, owner):
    other = app.test_client()
    _login(other, owner)
    _login(client, owner)
    enrol(client)

    assert not _signed_in(other) and _signed_in(client)
    live = [s for s in _sessions_of(owner) if s.revoked_at is None]
    assert len(live) == 1 and live[0].second_factor_done_at is not None
    ended = [s for s in _sessions_of(owner) if s.revoked_at is not None]
    assert [s.revoked_reason for s in ended] == ["twofactor.enabled"]
    log = client.get("/account/security").get_data(as_text=True)
    assert "Turned on two-factor authentication" in log and "Sessions ended" in log


def test_a_password_only_session_must_sign_in_again_where_two_factor_is_required(client, org, owner):
    _login(client, owner)
    secret = _totp_behind_the_sessions_back(owner)
    org.require_two_factor = True
    db.session.commit()

    answer = client.get(f"/orgs/{org.slug}/keys/")
    assert answer.status_code == 302 and answer.headers["Location"].startswith("/login?next=")
    page = client.get(answer.headers["Location"]).get_data(as_text=True)
    assert "signed in with the password alone" in page and "Sign in again" in page
    assert not _signed_in(client)
    assert all(s.revoked_at is not None for s in _sessions_of(owner))  # ended on the server, not just here

    again = _login(client, owner)
    assert again.headers["Location"].endswith("/login/two-factor")
    assert client.post("/login/two-factor", data={"code": code_at(secret, utcnow())}).status_code == 302
    assert client.get(f"/orgs/{org.slug}/keys/").status_code == 200


def test_a_password_only_staff_session_must_sign_in_again(app, client, staff):
    app.config["STAFF_REQUIRE_TWO_FACTOR"] = True
    try:
        _login(client, staff)
        _totp_behind_the_sessions_back(staff)
        answer = client.get("/staff/")
        assert answer.status_code == 302 and answer.headers["Location"].startswith("/login")
        assert not _signed_in(client)
    finally:
        app.config["STAFF_REQUIRE_TWO_FACTOR"] = False


def test_the_org_requirement_changes_only_from_a_session_that_passed_two_factor(client, org, owner):
    _login(client, owner)
    _totp_behind_the_sessions_back(owner)
    refused = client.post(f"/orgs/{org.slug}/settings/two-factor", data={"require": "y"}, follow_redirects=True)
    assert "sign in again with your second factor" in refused.get_data(as_text=True)
    db.session.refresh(org)
    assert not org.require_two_factor


def test_a_co_owner_the_requirement_blocks_cannot_lift_it_even_after_enrolling_elsewhere(client, org, owner):
    co_owner = factories.member(org, "owner")
    org.require_two_factor = True
    db.session.commit()
    _login(client, co_owner)
    answer = client.post(f"/orgs/{org.slug}/settings/two-factor", data={})
    assert answer.status_code == 302 and "/account/two-factor/" in answer.headers["Location"]
    enrol(client)  # now with two-factor, in a session that proved it: allowed
    assert client.post(f"/orgs/{org.slug}/settings/two-factor", data={}).status_code == 302
    db.session.refresh(org)
    assert not org.require_two_factor


def test_adding_a_second_factor_needs_the_password_or_a_code(client, owner):
    _login(client, owner)
    secret, _ = enrol(client)
    page = client.get("/account/two-factor/passkeys/new").get_data(as_text=True)
    assert 'name="confirmation"' in page
    refused = client.post(
        "/account/two-factor/passkeys/new",
        data={"name": "Laptop", "credential": "{}", "confirmation": "not my password"},
    )
    assert refused.status_code == 422 and "neither your password nor a current code" in refused.get_data(as_text=True)
    client.post("/account/two-factor/disable", data={"confirmation": next_step_code(secret)})
    # With two-factor off, the first factor needs no confirmation.
    page = client.get("/account/two-factor/app").get_data(as_text=True)
    assert 'name="confirmation"' not in page and setup_key(page)


def test_adding_an_app_next_to_a_passkey_needs_the_password_or_a_code(client, owner):
    from portal.models import Passkey

    _login(client, owner)
    db.session.add(Passkey(user_id=owner.id, name="Laptop", credential_id=b"cred-1", public_key=b"key"))
    db.session.commit()
    secret = setup_key(client.get("/account/two-factor/app").get_data(as_text=True))
    refused = client.post("/account/two-factor/app", data={"code": code_at(secret, utcnow())})
    assert refused.status_code == 422 and "neither your password nor a current code" in refused.get_data(as_text=True)
    assert db.session.get(TotpCredential, owner.id) is None
    added = client.post(
        "/account/two-factor/app", data={"code": next_step_code(secret), "confirmation": factories.PASSWORD}
    )
    assert added.status_code == 302 and db.session.get(TotpCredential, owner.id) is not None


def _issued_register_challenge(client) -> bytes:
    import base64

    assert client.get("/account/two-factor/passkeys/new").status_code == 200
    with client.session_transaction() as state:
        return base64.urlsafe_b64decode(state["webauthn_challenge_register"]["challenge"])


def test_a_passkey_challenge_is_accepted_once_even_from_a_copied_cookie(client, owner):
    from portal.twofactor import passkey_services

    _login(client, owner)
    challenge = _issued_register_challenge(client)
    passkey_services.spend_challenge(challenge)  # answered once already, from a copy of this session cookie
    db.session.commit()
    again = client.post("/account/two-factor/passkeys/new", data={"name": "Laptop", "credential": "{}"})
    assert again.status_code == 422 and "answered already" in again.get_data(as_text=True)

    fresh = _issued_register_challenge(client)
    answer = client.post("/account/two-factor/passkeys/new", data={"name": "Laptop", "credential": "{}"})
    assert "answered already" not in answer.get_data(as_text=True) and "could not be verified" in answer.get_data(
        as_text=True
    )
    assert fresh != challenge


def test_a_passkey_challenge_expires_after_ten_minutes(client, owner):
    _login(client, owner)
    _issued_register_challenge(client)
    with client.session_transaction() as state:
        state["webauthn_challenge_register"]["issued"] -= 10 * 60 + 1
    stale = client.post("/account/two-factor/passkeys/new", data={"name": "Laptop", "credential": "{}"})
    assert stale.status_code == 422 and "This passkey request expired" in stale.get_data(as_text=True)


# Pending account links ------------------------------------------------------------------------------------------


def test_signing_out_other_sessions_ends_pending_account_links(client, owner):
    _login(client, owner)
    client.post("/account/email", data={"new_email": "next@example.com", "password": factories.PASSWORD})
    assert _pending_links(owner) == ["change_email"]
    client.post("/account/sessions/revoke-others")
    assert _pending_links(owner) == []


def test_turning_two_factor_off_ends_pending_account_links(client, owner):
    _login(client, owner)
    secret, _ = enrol(client)
    client.post("/account/email", data={"new_email": "next@example.com", "password": factories.PASSWORD})
    assert _pending_links(owner) == ["change_email"]
    assert client.post("/account/two-factor/disable", data={"confirmation": next_step_code(secret)}).status_code == 302
    assert _pending_links(owner) == []


# Request bodies -------------------------------------------------------------------------------------------------


def test_portal_pages_refuse_bodies_that_are_not_forms_before_csrf(csrf_app, owner):
    browser = csrf_app.test_client()
    as_json = browser.post("/login", json={"email": owner.email, "password": factories.PASSWORD})
    assert as_json.status_code == 415  # not the CSRF error: the body is refused first
    assert "form submissions only" in as_json.get_data(as_text=True)
    api_client = browser.post(
        "/password/forgot", data='{"email": 5}', content_type="application/json", headers={"Accept": "application/json"}
    )
    assert api_client.status_code == 415 and api_client.get_json()["error"]["code"] == "unsupported_media_type"
    assert browser.post("/login", data="email=a", content_type="text/plain").status_code == 415
    assert not _signed_in(browser)


def test_form_posts_and_the_json_api_still_work(client, owner, api_key):
    assert client.post("/login", data={"email": owner.email, "password": factories.PASSWORD}).status_code == 302
    assert client.post("/logout").status_code == 302  # an empty POST, as a button sends it
    verified = client.post("/v1/keys/verify", json={"key": api_key.plaintext})
    assert verified.status_code == 200


# Sign-up --------------------------------------------------------------------------------------------------------


def test_the_verification_link_verifies_and_asks_to_sign_in_without_signing_in(client, mail_server):
    from tests.mail_helpers import deliver, link_path, only_mail_to

    data = {"display_name": "Ada", "email": "ada@example.com", "password": "a long enough password"}
    assert client.post("/signup", data=data).headers["Location"] == "/signup/check-email"
    assert not _signed_in(client)
    path = link_path(only_mail_to(deliver(mail_server), "ada@example.com"), "/verify-email/")
    followed = client.post(path, follow_redirects=True)
    assert "Address verified: ada@example.com. Sign in to continue." in followed.get_data(as_text=True)
    assert followed.request.path == "/login" and not _signed_in(client)
    assert client.post("/login", data={"email": data["email"], "password": data["password"]}).status_code == 302
    assert _signed_in(client)
