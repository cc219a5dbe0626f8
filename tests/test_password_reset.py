"""Password reset: a link mailed on request (or by support), one hour, single use; the answer never says whether
an address has an account. Mail goes through the real SMTP test server and the link is followed from it."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import sqlalchemy as sa

from portal.extensions import db
from portal.models import AccountToken, AuditEvent, SecurityEvent, User
from tests import factories
from tests.mail_helpers import deliver, link_path, only_mail_to

NEW_PASSWORD = "violet quartz lantern 42"


def _forgot(client, email, **kwargs):
    return client.post("/password/forgot", data={"email": email}, **kwargs)


def _reset(client, path, password=NEW_PASSWORD):
    return client.post(path, data={"new_password": password, "confirm": password})


def test_sign_in_page_links_to_the_reset_form(client):
    assert 'href="/password/forgot"' in client.get("/login").get_data(as_text=True)
    assert "Reset your password" in client.get("/password/forgot").get_data(as_text=True)


def test_reset_through_the_mailed_link(app, client, mail_server):
    user = factories.user("reset@example.com", verified=False)
    elsewhere = app.test_client()
    elsewhere.post("/login", data={"email": user.email, "password": factories.PASSWORD})

    answer = _forgot(client, "Reset@Example.com")
    assert answer.status_code == 200 and "If reset@example.com belongs to a ProCode account" in answer.text
    message = only_mail_to(deliver(mail_server), "reset@example.com")
    path = link_path(message, "/password/reset/")
    row = db.session.scalar(sa.select(AccountToken))
    assert row.token_hash == hashlib.sha256(path.rsplit("/", 1)[1].encode()).digest()
    assert row.expires_at - row.created_at == timedelta(hours=1)

    form = client.get(path)
    assert form.status_code == 200 and form.headers["Cache-Control"] == "no-store"
    weak = _reset(client, path, "password12")
    assert weak.status_code == 422 and "very common password" in weak.text
    assert _reset(client, path).headers["Location"] == "/login"

    db.session.expire_all()
    user = db.session.get(User, user.id)
    assert user.is_verified  # following the link proved the address
    assert "/login" in elsewhere.get("/").headers["Location"]  # every session ended
    assert client.post("/login", data={"email": user.email, "password": factories.PASSWORD}).status_code == 401
    assert client.post("/login", data={"email": user.email, "password": NEW_PASSWORD}).status_code == 302
    logged = db.session.scalars(sa.select(SecurityEvent.event).where(SecurityEvent.user_id == user.id)).all()
    assert "password.reset" in logged
    assert db.session.scalar(sa.select(AuditEvent.action).where(AuditEvent.target_id == str(user.id)))
    notice = only_mail_to(deliver(mail_server), "reset@example.com")
    assert "password was reset" in notice.message["Subject"]
    assert _reset(app.test_client(), path).status_code == 410  # single use
    assert app.test_client().get(path).status_code == 410


def test_unknown_address_gets_the_same_answer_and_no_mail(client, mail_server):
    factories.user("known@example.com")
    known = _forgot(client, "known@example.com")
    unknown = _forgot(client, "nobody@example.com")
    assert known.status_code == unknown.status_code == 200
    assert known.text.replace("known@", "X@") == unknown.text.replace("nobody@", "X@")
    assert [r.rcpt_tos for r in deliver(mail_server)] == [["known@example.com"]]


def test_a_link_expires_after_an_hour_and_a_newer_one_replaces_it(client, mail_server):
    factories.user("twice@example.com")
    _forgot(client, "twice@example.com")
    first = link_path(only_mail_to(deliver(mail_server), "twice@example.com"), "/password/reset/")
    _forgot(client, "twice@example.com")
    second = link_path(only_mail_to(deliver(mail_server), "twice@example.com"), "/password/reset/")
    assert client.get(first).status_code == 410  # replaced
    assert client.get(second).status_code == 200
    row = db.session.scalar(sa.select(AccountToken))
    row.expires_at = row.created_at + timedelta(hours=1) - timedelta(hours=2)
    db.session.commit()
    assert client.get(second).status_code == 410
    assert _reset(client, second).status_code == 410


def test_requests_are_throttled_per_address_with_the_same_answer(client, mail_server):
    factories.user("busy@example.com")
    answers = [_forgot(client, "busy@example.com") for _ in range(6)]
    assert {a.status_code for a in answers} == {200}
    assert len({a.text for a in answers}) == 1
    assert len(deliver(mail_server)) == 5  # the sixth got the same page and no mail


def test_requests_are_throttled_per_client_address(app, client, mail_server):
    factories.user("victim@example.com")
    for n in range(20):
        _forgot(client, f"probe{n}@example.com", environ_base={"REMOTE_ADDR": "198.51.100.7"})
    refused = _forgot(client, "victim@example.com", environ_base={"REMOTE_ADDR": "198.51.100.7"})
    assert refused.status_code == 200 and deliver(mail_server) == []
    _forgot(client, "victim@example.com", environ_base={"REMOTE_ADDR": "198.51.100.8"})
    assert len(deliver(mail_server)) == 1


def test_bad_input_is_a_form_error(client):
    response = client.post("/password/forgot", data={"email": ""})
    assert response.status_code == 422 and "This field is required." in response.text
    assert client.get("/password/reset/not-a-token").status_code == 410
    assert _reset(client, "/password/reset/" + "x" * 43).status_code == 410


def test_staff_send_a_member_a_reset_link_without_seeing_it(client, auth, staff, org, member, mail_server):
    membership_id = db.session.scalar(sa.text("SELECT id FROM memberships WHERE user_id = :u"), {"u": member.id})
    action = f"/staff/orgs/{org.slug}/members/{membership_id}/password-reset"
    auth.login(member)
    assert client.post(action).status_code == 404  # not staff
    auth.logout()
    auth.login(staff)
    assert action in client.get(f"/staff/orgs/{org.slug}").text
    response = client.post(action, follow_redirects=True)
    assert f"A password reset link was mailed to {member.email}" in response.text
    message = only_mail_to(deliver(mail_server), member.email)
    path = link_path(message, "/password/reset/")
    assert path not in response.text and "ProCode support sent you this link" in message.part("plain")
    event = db.session.scalar(sa.select(AuditEvent).where(AuditEvent.action == "user.password_reset_sent"))
    assert event.organization_id == org.id and event.actor_label == "ProCode support"
    assert event.target_id == str(member.id)
    assert "Password reset link sent" in client.get(f"/staff/orgs/{org.slug}").text  # recent activity
