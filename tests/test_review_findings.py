"""Security review findings (branch ``review``): each test demonstrates one problem and fails until it is fixed."""

from __future__ import annotations

import sqlalchemy as sa

from portal.extensions import db
from portal.models import OutboxMail
from tests import factories
from tests.mail_helpers import LINK, deliver, link_path, only_mail_to
from tests.twofactor_helpers import enrol


def _login(client, user):
    return client.post("/login", data={"email": user.email, "password": factories.PASSWORD})


def _signed_in(client) -> bool:
    return client.get("/account/sessions").status_code == 200


def _outbox_link(prefix: str, to: str) -> str:
    """The path of the newest pending mail's link to ``to`` starting with ``prefix`` (read from the outbox)."""
    row = db.session.scalars(
        sa.select(OutboxMail).where(OutboxMail.to_address == to).order_by(OutboxMail.created_at.desc())
    ).first()
    assert row is not None
    paths = [p for p in LINK.findall(row.body_text) if p.startswith(prefix)]
    assert paths, row.body_text
    return paths[0]


# F1 ------------------------------------------------------------------------------------------------------------


def test_f1_owner_blocked_by_org_two_factor_cannot_switch_the_requirement_off(client, org, owner):
    """A co-owner without two-factor is kept out of an organization that requires it, yet the form that turns the
    requirement off is reachable (its endpoint is ``twofactor.*``, which the guard always lets through)."""
    admin = factories.member(org, "owner")
    org.require_two_factor = True
    db.session.commit()

    _login(client, admin)
    blocked = client.get(f"/orgs/{org.slug}/keys/")
    assert blocked.status_code == 302 and "/account/two-factor/" in blocked.headers["Location"]  # guard works

    client.post(f"/orgs/{org.slug}/settings/two-factor", data={})  # require unchecked = off
    db.session.refresh(org)
    assert org.require_two_factor, "a member the requirement blocks switched it off for everyone"


# F2 ------------------------------------------------------------------------------------------------------------


def test_f2_password_only_session_from_before_enrolment_passes_the_org_requirement(app, client, org, owner):
    """Someone who signed in with the (stolen) password before the owner turned on two-factor keeps a working
    session afterwards, and the org guard lets it in: it checks the account, not how this session signed in."""
    attacker = app.test_client()
    _login(attacker, owner)
    assert _signed_in(attacker)

    _login(client, owner)
    enrol(client)  # the owner turns two-factor on from their own browser
    org.require_two_factor = True
    db.session.commit()

    # Either the old session ends on enrolment, or the guard refuses a session without second_factor_done_at.
    response = attacker.get(f"/orgs/{org.slug}/keys/")
    assert response.status_code != 200, "a password-only session opened an organization that requires 2FA"


def test_f2b_password_only_staff_session_opens_staff_area_after_enrolment(app, client, staff):
    app.config["STAFF_REQUIRE_TWO_FACTOR"] = True
    try:
        attacker = app.test_client()
        _login(attacker, staff)
        assert attacker.get("/staff/").status_code == 302  # no 2FA yet: sent to enrolment
        _login(client, staff)
        enrol(client)
        assert attacker.get("/staff/").status_code != 200, "password-only staff session reached /staff"
    finally:
        app.config["STAFF_REQUIRE_TWO_FACTOR"] = False


# F3 ------------------------------------------------------------------------------------------------------------


def test_f3_pending_email_change_survives_a_password_reset(app, client, owner):
    """Attacker with the password (and a session) asks to move the account to their address. The owner notices
    and resets the password (every session ends) — but the change link still works, so the attacker takes the
    account's address and then resets the password themselves."""
    attacker = app.test_client()
    _login(attacker, owner)
    attacker.post("/account/email", data={"new_email": "evil@attacker.example", "password": factories.PASSWORD})
    change = _outbox_link("/account/email/confirm/", "evil@attacker.example")

    client.post("/password/forgot", data={"email": owner.email})
    reset_path = _outbox_link("/password/reset/", owner.email)
    new_password = "a brand new passphrase 42"
    done = client.post(reset_path, data={"new_password": new_password, "confirm": new_password})
    assert done.status_code == 302

    client.post(change, data={})
    db.session.refresh(owner)
    assert owner.email != "evil@attacker.example", "change-email link outlived the password reset"


def test_f3b_pending_email_change_survives_a_password_change(app, client, owner):
    attacker = app.test_client()
    _login(attacker, owner)
    attacker.post("/account/email", data={"new_email": "evil2@attacker.example", "password": factories.PASSWORD})
    change = _outbox_link("/account/email/confirm/", "evil2@attacker.example")

    _login(client, owner)
    new_password = "another brand new passphrase 7"
    client.post(
        "/account/password",
        data={"current_password": factories.PASSWORD, "new_password": new_password, "confirm": new_password},
    )
    assert not _signed_in(attacker)  # the attacker's session ended ...
    client.post(change, data={})
    db.session.refresh(owner)
    assert owner.email != "evil2@attacker.example", "... but their change-email link still works"


# F4 ------------------------------------------------------------------------------------------------------------


def test_f4_delivered_mail_keeps_live_one_time_links_in_the_database(client, owner, mail_server):
    """Tokens are stored as SHA-256 only, but the outbox keeps the rendered body — live link included — after
    delivery, indefinitely. Anyone who reads the table (backup, replica, support SQL) can reset the password."""
    client.post("/password/forgot", data={"email": owner.email})
    message = only_mail_to(deliver(mail_server), owner.email)
    path = link_path(message, "/password/reset/")
    token = path.rsplit("/", 1)[1]
    stored = db.session.scalars(sa.select(OutboxMail.body_text).where(OutboxMail.sent_at.is_not(None))).all()
    assert not any(token in body for body in stored), "a sent mail's body still holds the live reset token"


# F5 ------------------------------------------------------------------------------------------------------------


def test_f5_sign_up_reveals_whether_an_address_has_an_account(app, owner):
    """The sign-up answer is "the same" page, but only a new address ends up signed in, so anyone can test an
    address: sign up with it and see whether /account/sessions opens."""
    data = {"display_name": "Probe", "password": "probe passphrase 9 lives"}
    known = app.test_client()
    known.post("/signup", data={**data, "email": owner.email})
    unknown = app.test_client()
    unknown.post("/signup", data={**data, "email": "nobody-yet@example.com"})
    assert _signed_in(known) == _signed_in(unknown), "signed-in state after sign-up tells known from unknown"


# F6 ------------------------------------------------------------------------------------------------------------


def test_f6_json_bodies_reach_the_forms_and_answer_500(app, owner):
    """Flask-WTF reads a JSON body as form data. Values that are not strings crash validators and services, and
    the NUL refusal in ``start_request`` only looks at form-encoded bodies, so NUL reaches PostgreSQL too.
    Anyone can do this on the sign-in page (with CSRF on, the token from GET /login goes in X-CSRFToken)."""
    anon = app.test_client()
    statuses = {
        "login email int": anon.post("/login", json={"email": 1, "password": "x"}).status_code,
        "login password dict": anon.post("/login", json={"email": "a@b.c", "password": {"a": 1}}).status_code,
        "forgot email int": anon.post("/password/forgot", json={"email": 5}).status_code,
        "login NUL": anon.post("/login", json={"email": "a\u0000@b.c", "password": "x" * 12}).status_code,
        "forgot NUL": anon.post("/password/forgot", json={"email": "a\u0000@b.c"}).status_code,
    }
    _login(anon, owner)
    statuses["email change int"] = anon.post("/account/email", json={"new_email": 5, "password": 5}).status_code
    assert all(code < 500 for code in statuses.values()), statuses
