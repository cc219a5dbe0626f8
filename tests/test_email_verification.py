"""Verified addresses: the link mailed at sign-up, what an unverified member cannot do, and changing address.

Mail goes through the real SMTP test server; links are read from the received mail and followed.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta

import sqlalchemy as sa

from portal.extensions import db
from portal.models import AccountToken, ApiKey, Invitation, Membership, OutboxMail, User
from tests import factories
from tests.mail_helpers import deliver, link_path, only_mail_to

SIGNUP = {"display_name": "Ada Lovelace", "email": "ada@example.com", "password": "a long enough password"}


def _user(email: str) -> User:
    db.session.expire_all()
    return db.session.scalar(sa.select(User).where(User.email == email))


def test_sign_up_mails_a_link_that_verifies_the_address_once(client, mail_server):
    assert client.post("/signup", data=SIGNUP).status_code == 302
    message = only_mail_to(deliver(mail_server), "ada@example.com")
    assert "Verify" in message.message["Subject"]
    path = link_path(message, "/verify-email/")
    token = path.rsplit("/", 1)[1]
    row = db.session.scalar(sa.select(AccountToken))
    assert row.purpose == "verify_email" and row.token_hash == hashlib.sha256(token.encode()).digest()
    assert row.expires_at - row.created_at == timedelta(hours=24)
    client.post("/login", data={"email": SIGNUP["email"], "password": SIGNUP["password"]})
    assert "Verify your address" in client.get("/orgs/new").get_data(as_text=True)  # the banner

    page = client.get(path)
    assert page.status_code == 200 and page.headers["Cache-Control"] == "no-store"
    assert not _user("ada@example.com").is_verified  # opening the link (a mail scanner, say) changes nothing
    assert client.post(path).status_code == 302
    assert _user("ada@example.com").is_verified
    assert "Verify your address" not in client.get("/orgs/new").get_data(as_text=True)
    assert client.post(path).status_code == 410  # once
    assert client.get(path).status_code == 410


def test_an_expired_verification_link_is_refused(client, mail_server):
    client.post("/signup", data=SIGNUP)
    path = link_path(only_mail_to(deliver(mail_server), "ada@example.com"), "/verify-email/")
    row = db.session.scalar(sa.select(AccountToken))
    row.expires_at = row.created_at - timedelta(seconds=1)
    db.session.commit()
    assert client.get(path).status_code == 410
    assert client.post(path).status_code == 410
    assert not _user("ada@example.com").is_verified


def test_resend_is_a_post_throttled_to_three_an_hour(client, auth, mail_server):
    user = factories.user(verified=False)
    auth.login(user)
    assert client.get("/account/verify-email/resend").status_code == 405
    for _ in range(3):
        page = client.post("/account/verify-email/resend", data={"next": "/orgs/new"}, follow_redirects=True)
        assert "We sent a new link" in page.get_data(as_text=True)
    refused = client.post("/account/verify-email/resend", follow_redirects=True).get_data(as_text=True)
    assert "already sent several links" in refused
    sent = deliver(mail_server)
    assert [r.rcpt_tos for r in sent] == [[user.email]] * 3
    client.post(link_path(sent[-1], "/verify-email/"))
    assert _user(user.email).is_verified


def test_unverified_member_cannot_create_live_keys(client, auth, org):
    owner = factories.member(org, "owner", factories.user(verified=False))
    auth.login(owner)
    live = client.post(f"/orgs/{org.slug}/keys/new", data={"name": "Prod", "environment": "live"})
    assert live.status_code == 422
    assert "Verify your email address before creating live keys" in live.get_data(as_text=True)
    assert client.post(f"/orgs/{org.slug}/keys/new", data={"name": "Dev", "environment": "test"}).status_code == 200
    assert [k.environment for k in db.session.scalars(sa.select(ApiKey))] == ["test"]


def test_unverified_member_cannot_accept_an_email_bound_invite_until_verified(client, auth, org, owner, mail_server):
    auth.login(owner)
    client.post(f"/orgs/{org.slug}/invitations", data={"role": "developer", "email": "new@example.com"})
    invite_path = link_path(only_mail_to(deliver(mail_server), "new@example.com"), "/invite/")
    auth.logout()
    invitee = factories.user("new@example.com", verified=False)
    auth.login(invitee)
    page = client.get(invite_path).get_data(as_text=True)
    assert "Verify your email address first" in page and "Send me a new verification link" in page
    assert client.post(invite_path).status_code == 409
    assert db.session.scalar(sa.select(Membership).filter_by(user_id=invitee.id)) is None

    client.post("/account/verify-email/resend", data={"next": invite_path})
    client.post(link_path(only_mail_to(deliver(mail_server), "new@example.com"), "/verify-email/"))
    assert client.post(invite_path).status_code == 302
    assert db.session.scalar(sa.select(Membership.role).filter_by(user_id=invitee.id)) == "developer"


def test_invite_with_an_email_is_mailed_in_the_same_transaction(client, auth, org, owner, mail_server):
    auth.login(owner)
    page = client.post(f"/orgs/{org.slug}/invitations", data={"role": "viewer", "email": "Guest@Example.com"})
    body = page.get_data(as_text=True)
    assert "We mailed this link to guest@example.com" in body
    message = only_mail_to(deliver(mail_server), "guest@example.com")
    assert org.name in message.message["Subject"]
    assert link_path(message, "/invite/") in body  # the same link the page shows once
    client.post(f"/orgs/{org.slug}/invitations", data={"role": "viewer"})  # no address: nothing to mail
    assert deliver(mail_server) == []


def test_unverified_member_cannot_be_made_admin_or_owner(client, auth, org, owner):
    newcomer = factories.member(org, "viewer", factories.user(verified=False))
    membership = db.session.scalar(sa.select(Membership).filter_by(user_id=newcomer.id))
    auth.login(owner)
    for role in ("admin", "owner"):
        response = client.post(f"/orgs/{org.slug}/members/{membership.id}/role", data={"role": role})
        assert response.status_code == 409
        assert "has not verified their email address yet" in response.get_data(as_text=True)
    assert client.post(f"/orgs/{org.slug}/members/{membership.id}/role", data={"role": "developer"}).status_code == 302
    db.session.refresh(membership)
    assert membership.role == "developer"


def test_an_open_admin_invite_needs_a_verified_account(client, auth, org, owner):
    auth.login(owner)
    page = client.post(f"/orgs/{org.slug}/invitations", data={"role": "admin"}).get_data(as_text=True)
    path = "/invite/" + page.split("/invite/")[1].split("<")[0].strip()
    auth.logout()
    auth.login(factories.user(verified=False))
    assert client.post(path).status_code == 409
    assert db.session.scalar(sa.select(Invitation.accepted_at)) is None


def test_email_change_takes_effect_when_the_new_address_confirms(client, auth, app, mail_server):
    user = factories.user("old@example.com")
    auth.login(user)
    wrong = client.post("/account/email", data={"new_email": "new@example.com", "password": "not my password"})
    assert wrong.status_code == 422 and "not your password" in wrong.get_data(as_text=True)
    ok = client.post("/account/email", data={"new_email": "New@Example.com", "password": factories.PASSWORD})
    assert ok.status_code == 302
    path = link_path(only_mail_to(deliver(mail_server), "new@example.com"), "/account/email/confirm/")
    assert _user("old@example.com") is not None  # nothing changes before the link is followed

    other = app.test_client()  # the link works from any browser: it proves the mailbox, not the session
    assert other.get(path).status_code == 200
    assert other.post(path).status_code == 302
    assert _user("old@example.com") is None and _user("new@example.com").is_verified
    notice = only_mail_to(deliver(mail_server), "old@example.com")
    assert "was changed" in notice.message["Subject"] and "new@example.com" in notice.part("plain")
    assert other.post(path).status_code == 410
    assert client.post("/login", data={"email": "new@example.com", "password": factories.PASSWORD})


def test_email_change_to_a_taken_address_answers_the_same_and_changes_nothing(client, auth, mail_server):
    user = factories.user("mine@example.com")
    factories.user("theirs@example.com", name="Them")
    auth.login(user)
    response = client.post("/account/email", data={"new_email": "theirs@example.com", "password": factories.PASSWORD})
    assert response.status_code == 302
    assert "We sent a link to theirs@example.com" in client.get("/account/email").get_data(as_text=True)
    message = only_mail_to(deliver(mail_server), "theirs@example.com")
    assert "/account/email/confirm/" not in message.part("plain")
    assert db.session.scalar(sa.select(sa.func.count()).select_from(AccountToken)) == 0
    assert _user("mine@example.com") is not None


def test_email_change_refuses_look_alike_addresses(client, auth):
    user = factories.user()
    auth.login(user)
    response = client.post(
        "/account/email", data={"new_email": "p\u0430ypal@example.com", "password": factories.PASSWORD}
    )
    assert response.status_code == 422 and "mixes letters from different alphabets" in response.get_data(as_text=True)
    assert db.session.scalar(sa.select(sa.func.count()).select_from(OutboxMail)) == 0
