"""Every page a visitor, a member, an admin and a staff user can reach, named by endpoint, with the data that
makes each one show something (keys in every state, usage, an invitation, links from mails).

The catalogue is checked against the app's URL map (tests/test_page_catalogue.py): a new GET route must be
listed here or excluded with a reason, so it cannot escape the accessibility and phone-width checks.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import timedelta

import pyotp
import sqlalchemy as sa
from flask import Flask

from portal import create_app
from portal.auth import tokens
from portal.extensions import db
from portal.keys import services as key_services
from portal.models import Membership, User, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from portal.models.two_factor import Passkey, TotpCredential
from portal.notify import webhooks
from portal.orgs import invitations
from portal.orgs import services as org_services
from portal.timeutil import utcnow
from portal.twofactor import sealing
from tests import factories
from tests.servers import SECRETS
from tests.usage_helpers import event, record

# GET routes that are not pages people read: each with the reason it is left out.
EXCLUDED = {
    "static": "stylesheets, scripts and images, not pages",
    "api.openapi": "JSON for programs; people read it as docs.api",
    "api.whoami": "JSON answered to an API key, not to a browser session",
    "api.verify_gateway": "answered to gateways (nginx auth_request, Caddy forward_auth), not to people",
    "usage.key_csv": "a CSV download",
    "usage.dashboard_csv": "a CSV download",
    "staff.org_usage_csv": "a CSV download",
    "ops.healthz": "a probe for container health checks, JSON",
    "ops.readyz": "a probe for container health checks and load balancers, JSON",
    "ops.metrics": "Prometheus' scrape, text for programs, behind a bearer token",
}


@dataclass(frozen=True)
class Visit:
    """One page as one person sees it. ``args`` name attributes of :class:`Seed`; ``submit`` is a button
    pressed with the form left empty, to see the page's error state; ``path`` is a raw path (no endpoint)."""

    who: str
    endpoint: str | None
    args: dict[str, str] = field(default_factory=dict)
    state: str = ""
    submit: str | None = None
    status: int = 200
    path: str | None = None

    @property
    def name(self) -> str:
        what = self.endpoint or self.path
        return f"{self.who}: {what}" + (f" ({self.state})" if self.state else "")


ORG = {"slug": "org"}
EMPTY = {"slug": "empty_org"}

VISITS = [
    # Visitors
    Visit("anonymous", "auth.login"),
    Visit("anonymous", "auth.login", state="empty form sent", submit="Sign in", status=422),
    Visit("anonymous", "auth.signup"),
    Visit("anonymous", "auth.signup", state="empty form sent", submit="Create account", status=422),
    Visit("anonymous", "auth.check_email"),
    Visit("anonymous", "auth.forgot_password"),
    Visit("anonymous", "auth.reset_password", {"token": "reset_token"}),
    Visit("anonymous", "auth.reset_password", {"token": "bad_token"}, state="used link", status=410),
    Visit("anonymous", "auth.verify_email", {"token": "verify_token"}),
    Visit("anonymous", "auth.confirm_email_change", {"token": "change_token"}),
    Visit("anonymous", "orgs.invitation", {"token": "invite_token"}),
    Visit("anonymous", "orgs.invitation", {"token": "bad_token"}, state="unknown invite", status=404),
    Visit("anonymous", "docs.api"),
    Visit("anonymous", None, path="/no-such-page", state="not found", status=404),
    Visit("pending", "twofactor.challenge", state="password given, code not yet"),
    # A member (developer) of the organization, whose address is not verified yet
    Visit("member", "orgs.home"),
    Visit("member", "orgs.overview", ORG),
    Visit("member", "keys.index", ORG),
    Visit("member", "keys.detail", {**ORG, "key_id": "key"}),
    Visit("member", "usage.dashboard", ORG),
    Visit("member", "usage.key", {**ORG, "key_id": "key"}),
    Visit("member", "orgs.members", ORG),
    Visit("member", "orgs.audit", ORG),
    Visit("member", "notify.events", ORG),
    Visit("member", "orgs.settings", ORG, state="not allowed", status=403),
    Visit("member", "notify.settings", ORG, state="not allowed", status=403),
    Visit("member", "notify.webhooks", ORG, state="not allowed", status=403),
    Visit("member", "account.index"),
    Visit("member", "account.sessions_page"),
    Visit("member", "account.security"),
    Visit("member", "auth.change_password"),
    Visit("member", "auth.change_password", state="empty form sent", submit="Change password", status=422),
    Visit("member", "auth.change_email"),
    # An owner, with keys in every state, usage, a pending invitation and an empty second organization
    Visit("admin", "orgs.home"),
    Visit("admin", "keys.index", ORG),
    Visit("admin", "keys.index", EMPTY, state="no keys"),
    Visit("admin", "keys.create", ORG),
    Visit("admin", "keys.create", ORG, state="empty form sent", submit="Create key", status=422),
    Visit("admin", "keys.detail", {**ORG, "key_id": "key"}, state="with usage"),
    Visit("admin", "keys.detail", {**ORG, "key_id": "live_key"}, state="live"),
    Visit("admin", "keys.detail", {**ORG, "key_id": "rolled_key"}, state="rolled, in grace"),
    Visit("admin", "keys.detail", {**ORG, "key_id": "revoked_key"}, state="revoked"),
    Visit("admin", "keys.detail", {**ORG, "key_id": "missing_key"}, state="not found", status=404),
    Visit("admin", "keys.confirm_revoke", {**ORG, "key_id": "key"}),
    Visit("admin", "keys.confirm_revoke", {**ORG, "key_id": "live_key"}, state="live, no calls"),
    Visit("admin", "keys.confirm_roll", {**ORG, "key_id": "key"}),
    Visit("admin", "usage.dashboard", ORG),
    Visit("admin", "usage.dashboard", EMPTY, state="no usage"),
    Visit("admin", "usage.key", {**ORG, "key_id": "key"}),
    Visit("admin", "usage.key", {**ORG, "key_id": "live_key"}, state="no usage"),
    Visit("admin", "orgs.overview", ORG),
    Visit("admin", "orgs.members", ORG),
    Visit("admin", "orgs.members", EMPTY, state="alone"),
    Visit("admin", "orgs.offboarding", {**ORG, "user_id": "member_id"}),
    Visit("admin", "orgs.confirm_remove_member", {**ORG, "membership_id": "member_membership_id"}),
    Visit("member", "orgs.confirm_remove_member", {**ORG, "membership_id": "member_membership_id"}, state="leave"),
    Visit("admin", "orgs.confirm_revoke_invitation", {**ORG, "invitation_id": "invitation_id"}),
    Visit("admin", "orgs.delete", EMPTY),
    Visit("admin", "orgs.audit", ORG),
    Visit("admin", "notify.events", ORG, state="new events, linked to their keys and people"),
    Visit("admin", "orgs.settings", ORG),
    Visit("admin", "notify.settings", ORG),
    Visit("admin", "notify.webhooks", ORG),
    Visit("admin", "notify.webhooks", EMPTY, state="no endpoints"),
    Visit("admin", "notify.new_webhook", ORG),
    Visit("admin", "notify.new_webhook", ORG, state="empty form sent", submit="Add endpoint", status=422),
    Visit("admin", "notify.webhook", {**ORG, "endpoint_id": "webhook"}, state="with deliveries and attempts"),
    Visit("admin", "notify.webhook", {**ORG, "endpoint_id": "disabled_webhook"}, state="disabled by the deliverer"),
    Visit("admin", "notify.delete_webhook", {**ORG, "endpoint_id": "webhook"}),
    Visit("admin", "orgs.create"),
    Visit("admin", "orgs.create", state="empty form sent", submit="Create organization", status=422),
    Visit("admin", "twofactor.index", state="off"),
    Visit("admin", "twofactor.totp_setup"),
    # Support staff, with an authenticator app and a passkey, in no organization
    Visit("staff", "orgs.home", state="no organization"),
    Visit("staff", "staff.index"),
    Visit("staff", "staff.mail_outbox"),
    Visit("staff", "staff.org_detail", ORG),
    Visit("staff", "staff.org_usage", {"org_ref": "org"}),
    Visit("staff", "twofactor.index", state="on"),
    Visit("staff", "twofactor.recovery_codes"),
    Visit("staff", "twofactor.new_recovery_codes", state="nothing to show"),
    Visit("staff", "twofactor.passkey_new"),
    Visit("staff", "twofactor.passkey_remove", {"passkey_id": "passkey_id"}),
    Visit("staff", "twofactor.totp_remove"),
    Visit("staff", "twofactor.disable"),
    Visit("staff", "keys.index", ORG, state="not a member", status=404),
]


@dataclass
class Seed:
    """What :func:`seed` made: route arguments by name, and how each person signs in."""

    org: str
    empty_org: str
    key: str
    live_key: str
    rolled_key: str
    revoked_key: str
    missing_key: str
    member_id: str
    member_membership_id: str
    invitation_id: str
    webhook: str
    disabled_webhook: str
    passkey_id: str
    reset_token: str
    verify_token: str
    change_token: str
    invite_token: str
    bad_token: str
    emails: dict[str, str]
    totp_secret: str

    def args(self, visit: Visit) -> dict[str, str]:
        return {param: getattr(self, name) for param, name in visit.args.items()}


def seed_app(database_url: str) -> Flask:
    """An app on the live server's database with the server's secrets, so what it writes the server accepts."""
    return create_app({"SQLALCHEMY_DATABASE_URI": database_url, **SECRETS}, env="testing")


def seed(app: Flask) -> Seed:
    """People, organizations, keys in every state, usage and one-time links, committed for the live server."""
    tag = secrets.token_hex(3)
    with app.app_context():
        admin = factories.user(f"admin-{tag}@example.com", "Ada Admin")
        member = factories.user(f"member-{tag}@example.com", "Mo Member", verified=False)
        staff = factories.user(f"staff-{tag}@example.com", "Sam Staff", is_staff=True)
        stranger = factories.user(f"reset-{tag}@example.com", "Rita Reset", verified=False)

        org = org_services.create_org(f"Acme Robotics {tag}", admin)
        empty = org_services.create_org(f"Empty Co {tag}", admin)
        member_membership = Membership(user_id=member.id, organization_id=org.id, role="developer")
        db.session.add(member_membership)
        db.session.commit()

        # Endpoints first, so the keys' events below are queued for the active one.
        hook = webhooks.create_endpoint(
            org, url="https://hooks.example.com/procode", events=["*"], description="Pager bridge", actor=admin
        ).endpoint
        broken = webhooks.create_endpoint(
            org, url="https://old.example.com/hooks", events=["key.revoked"], actor=admin
        ).endpoint
        key = factories.api_key(org, admin, name="Checkout service").api_key
        # Expires within the week: the keys list and the usage dashboard show the expiry banner.
        live = factories.api_key(
            org, admin, name="Billing", environment="live", expires_at=utcnow() + timedelta(days=3)
        ).api_key
        rolled = factories.api_key(org, admin, name="Search backend").api_key
        key_services.roll_key(org, rolled, timedelta(hours=24), admin)
        revoked = factories.api_key(org, member, name="Old prototype").api_key
        key_services.revoke_key(org, revoked, admin)
        now = utcnow()
        agent = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"
        record(
            [event(key, now - timedelta(minutes=m), client_ip="203.0.113.9", user_agent=agent) for m in range(1, 30)]
            + [event(key, now - timedelta(hours=h), "rate_limited", client_ip="2001:db8::1") for h in range(1, 5)]
            + [event(rolled, now - timedelta(minutes=5), client_ip="198.51.100.7", user_agent="search/2.1")]
        )
        admin_membership = org_services.membership_of(org.id, admin)
        assert admin_membership is not None
        invite = invitations.create_invitation(
            org,
            role="developer",
            email=None,
            ttl=timedelta(days=7),
            actor=admin,
            actor_membership=admin_membership,
        )

        _delivery_log(hook, broken)

        secret = pyotp.random_base32()
        db.session.add(TotpCredential(user_id=staff.id, secret_sealed=sealing.seal(secret)))
        passkey = Passkey(user_id=staff.id, name="Laptop", credential_id=secrets.token_bytes(16), public_key=b"-")
        db.session.add(passkey)
        reset_token = tokens.issue(stranger, tokens.RESET_PASSWORD, timedelta(hours=1))
        verify_token = tokens.issue(stranger, tokens.VERIFY_EMAIL, timedelta(hours=1))
        change_token = tokens.issue(admin, tokens.CHANGE_EMAIL, timedelta(hours=1), new_email=f"ada-{tag}@example.com")
        db.session.commit()
        return Seed(
            org=org.slug,
            empty_org=empty.slug,
            key=str(key.id),
            live_key=str(live.id),
            rolled_key=str(rolled.id),
            revoked_key=str(revoked.id),
            missing_key="00000000-0000-4000-8000-000000000000",
            member_id=str(member.id),
            member_membership_id=str(member_membership.id),
            invitation_id=str(invite.invitation.id),
            webhook=str(hook.id),
            disabled_webhook=str(broken.id),
            passkey_id=str(passkey.id),
            reset_token=reset_token,
            verify_token=verify_token,
            change_token=change_token,
            invite_token=invite.token,
            bad_token="not-a-real-token-" + tag,
            emails={"admin": admin.email, "member": member.email, "staff": staff.email},
            totp_secret=secret,
        )


def _delivery_log(hook: WebhookEndpoint, broken: WebhookEndpoint) -> None:
    """Deliveries as the deliverer leaves them: one delivered, one retrying, one failed; the other endpoint
    disabled after repeated failures."""
    now = utcnow()
    deliveries = list(db.session.scalars(sa.select(WebhookDelivery).where(WebhookDelivery.endpoint_id == hook.id)))
    outcomes = [
        ("delivered", [(200, None, '{"received": true}')]),
        ("pending", [(503, None, "Service Unavailable"), (None, "timed out after 10 s", None)]),
        ("failed", [(500, None, "<h1>Internal Server Error</h1>")] * 3),
    ]
    for delivery, (status, attempts) in zip(deliveries, outcomes, strict=False):
        delivery.status, delivery.attempts = status, len(attempts)
        delivery.last_attempt_at = now - timedelta(minutes=1)
        delivery.next_attempt_at = now + timedelta(minutes=5)
        for n, (code, error, body) in enumerate(attempts):
            db.session.add(
                WebhookAttempt(
                    delivery_id=delivery.id,
                    attempted_at=now - timedelta(minutes=10 - n),
                    status_code=code,
                    duration_ms=240 + n,
                    error=error,
                    response_excerpt=body,
                )
            )
    broken.disabled_at = now - timedelta(hours=2)
    broken.disabled_reason = "Failed 20 times in a row over 24 hours (last: HTTP 502)."
    db.session.commit()


def user_ids(app: Flask, seeded: Seed) -> dict[str, str]:
    """The seeded people's ids, by role name."""
    with app.app_context():
        return {
            who: str(db.session.scalar(db.select(User.id).where(User.email == email)))
            for who, email in seeded.emails.items()
        }
