from __future__ import annotations

import sqlalchemy as sa

from portal.extensions import db
from portal.models import AuditEvent, Membership, Organization, User
from tests import factories


def test_signup_creates_user_personal_org_then_the_member_signs_in(client):
    response = client.post(
        "/signup",
        data={"display_name": "Ada Lovelace", "email": "Ada@Example.com", "password": "a long enough password"},
    )
    assert response.status_code == 302
    user = db.session.scalar(sa.select(User).where(User.email == "ada@example.com"))
    assert user is not None
    assert user.password_hash.startswith("$argon2id$")
    membership = db.session.scalar(sa.select(Membership).where(Membership.user_id == user.id))
    assert membership.role == "owner"
    org = db.session.get(Organization, membership.organization_id)
    assert org.plan == "free"
    assert response.headers["Location"] == "/signup/check-email"
    check = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "Check your email" in check and "Then sign in" in check and 'href="/login"' in check
    assert "/login" in client.get("/").headers["Location"]  # not signed in by sign-up (see the next test)
    signed_in = client.post("/login", data={"email": "ada@example.com", "password": "a long enough password"})
    assert signed_in.status_code == 302
    home = client.get("/")  # signed in: the portal leads on to the new organization's keys
    assert home.headers["Location"].endswith(f"/orgs/{org.slug}/keys/")
    page = client.get(home.headers["Location"]).get_data(as_text=True)
    assert "No keys yet" in page and "Verify your address" in page


def test_signup_rejects_bad_input_without_writing(client):
    before = db.session.scalar(sa.select(sa.func.count()).select_from(User))
    response = client.post("/signup", data={"display_name": "", "email": "not-an-email", "password": "short"})
    assert response.status_code == 422
    body = response.get_data(as_text=True)
    assert "This field is required." in body
    assert "Invalid email address." in body
    assert "Use 10 to 128 characters." in body
    assert db.session.scalar(sa.select(sa.func.count()).select_from(User)) == before


def test_signup_with_taken_email_case_insensitive_answers_like_a_new_one(client):
    factories.user("taken@example.com")
    before = db.session.scalar(sa.select(sa.func.count()).select_from(User))
    response = client.post(
        "/signup", data={"display_name": "X", "email": "TAKEN@example.com", "password": "a long enough password"}
    )
    assert response.status_code == 302 and response.headers["Location"] == "/signup/check-email"
    assert db.session.scalar(sa.select(sa.func.count()).select_from(User)) == before
    assert "/login" in client.get("/").headers["Location"]  # nobody was signed in


def test_login_failure_does_not_reveal_whether_email_exists(client):
    user = factories.user()
    wrong_password = client.post("/login", data={"email": user.email, "password": "wrong password!"})
    unknown_email = client.post("/login", data={"email": "nobody@example.com", "password": "wrong password!"})
    assert wrong_password.status_code == unknown_email.status_code == 401
    assert "Invalid email or password." in wrong_password.get_data(as_text=True)
    assert "Invalid email or password." in unknown_email.get_data(as_text=True)


def test_login_throttles_repeated_failures_per_account(client, app):
    user = factories.user()
    limit = app.config["LOGIN_MAX_FAILURES_PER_ACCOUNT"]
    for _ in range(limit):
        assert client.post("/login", data={"email": user.email, "password": "wrong password!"}).status_code == 401
    # Now even the right password is refused until the window passes.
    response = client.post("/login", data={"email": user.email, "password": factories.PASSWORD})
    assert response.status_code == 429
    assert "Too many failed sign-in attempts" in response.get_data(as_text=True)


def test_successful_sign_ins_do_not_count_towards_the_throttle(client, app):
    """Every attempt is counted before the password check (so concurrent guesses cannot all slip through);
    a successful one gives its count back, so signing in often never locks anyone out."""
    user = factories.user()
    limit = app.config["LOGIN_MAX_FAILURES_PER_ACCOUNT"]
    for _ in range(limit + 2):
        assert client.post("/login", data={"email": user.email, "password": factories.PASSWORD}).status_code == 302
        client.post("/logout", data={})
    for _ in range(limit):
        assert client.post("/login", data={"email": user.email, "password": "wrong password!"}).status_code == 401
    assert client.post("/login", data={"email": user.email, "password": factories.PASSWORD}).status_code == 429


def test_login_throttles_per_ip_across_accounts(client, app):
    limit = app.config["LOGIN_MAX_FAILURES_PER_IP"]
    for n in range(limit):
        client.post("/login", data={"email": f"guess{n}@example.com", "password": "wrong password!"})
    user = factories.user()
    response = client.post("/login", data={"email": user.email, "password": factories.PASSWORD})
    assert response.status_code == 429


def test_login_logout_and_logout_needs_post(client, auth, org, owner):
    assert auth.login(owner).status_code == 302
    assert client.get(f"/orgs/{org.slug}/keys/").status_code == 200
    assert client.get("/logout").status_code == 405
    assert auth.logout().status_code == 302
    response = client.get(f"/orgs/{org.slug}/keys/")
    assert response.status_code == 302 and "/login" in response.headers["Location"]


def test_login_redirect_ignores_offsite_next(client, owner):
    response = client.post(
        "/login?next=https://evil.example/", data={"email": owner.email, "password": factories.PASSWORD}
    )
    assert response.headers["Location"] == "/"


def test_password_change_signs_out_other_sessions(app, auth, client, owner):
    other = app.test_client()
    other.post("/login", data={"email": owner.email, "password": factories.PASSWORD})
    auth.login(owner)
    response = client.post(
        "/account/password",
        data={
            "current_password": factories.PASSWORD,
            "new_password": "a brand new password",
            "confirm": "a brand new password",
        },
    )
    assert response.status_code == 302
    assert client.get("/").status_code == 302  # still signed in here: home redirects to the org
    assert "/login" not in client.get("/").headers["Location"]
    assert "/login" in other.get("/").headers["Location"]
    assert db.session.scalar(sa.select(AuditEvent).where(AuditEvent.action == "user.password_changed"))


def test_password_change_rejects_wrong_current_password(auth, client, owner):
    auth.login(owner)
    response = client.post(
        "/account/password",
        data={
            "current_password": "not my password",
            "new_password": "a brand new password",
            "confirm": "a brand new password",
        },
    )
    assert response.status_code == 422
    assert "not your current password" in response.get_data(as_text=True)


def test_remember_me_sets_a_hardened_cookie(client, owner):
    response = client.post("/login", data={"email": owner.email, "password": factories.PASSWORD, "remember": "y"})
    cookies = response.headers.getlist("Set-Cookie")
    remember = [c for c in cookies if c.startswith("remember_token=")]
    assert remember and "HttpOnly" in remember[0] and "SameSite=Lax" in remember[0]
    session_cookie = [c for c in cookies if c.startswith("procode_session=")]
    assert session_cookie and "HttpOnly" in session_cookie[0]
