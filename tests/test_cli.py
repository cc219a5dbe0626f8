from __future__ import annotations

import pytest
import sqlalchemy as sa

from portal.extensions import db
from portal.keys import format as keyformat
from portal.models import ApiKey, AuditEvent, Organization, User
from tests import factories


@pytest.fixture
def cli(app):
    runner = app.test_cli_runner()
    return lambda *args: runner.invoke(args=list(args))


def _keys(org_id):
    return db.session.scalar(sa.select(sa.func.count()).select_from(ApiKey).filter_by(organization_id=org_id))


def test_seed_is_idempotent(cli):
    first = cli("seed")
    assert first.exit_code == 0, first.output
    assert "demo@procode.dev" in first.output and "support@procode.dev" in first.output
    assert "Demo test key (shown once): pk_test_" in first.output
    org = db.session.scalar(sa.select(Organization).filter_by(slug="default"))
    assert org.name == "Default Organization" and org.plan == "free"
    assert _keys(org.id) == 1
    support = db.session.scalar(sa.select(User).filter_by(email="support@procode.dev"))
    assert support.is_staff

    second = cli("seed")
    assert second.exit_code == 0, second.output
    assert "pk_test_" not in second.output and "none created" in second.output
    assert _keys(org.id) == 1
    orgs = db.session.scalar(sa.select(sa.func.count()).select_from(Organization).filter_by(slug="default"))
    assert orgs == 1
    users = db.session.scalar(
        sa.select(sa.func.count()).select_from(User).where(User.email.in_(["demo@procode.dev", "support@procode.dev"]))
    )
    assert users == 2


def test_users_create(cli):
    result = cli("users", "create", "Ops@Example.com", "--name", "Ops", "--staff", "--password", "a long password")
    assert result.exit_code == 0, result.output
    user = db.session.scalar(sa.select(User).filter_by(email="ops@example.com"))
    assert user.is_staff and user.display_name == "Ops" and user.password_hash.startswith("$argon2id$")
    again = cli("users", "create", "ops@example.com", "--password", "a long password")
    assert again.exit_code != 0 and "already exists" in again.output
    short = cli("users", "create", "short@example.com", "--password", "short")
    assert short.exit_code != 0
    assert db.session.scalar(sa.select(User).filter_by(email="short@example.com")) is None


def test_orgs_set_plan_is_audited(cli, org):
    result = cli("orgs", "set-plan", org.slug, "enterprise", "--reason", "contract signed")
    assert result.exit_code == 0, result.output
    assert db.session.get(Organization, org.id).plan == "enterprise"
    event = db.session.scalar(sa.select(AuditEvent).filter_by(organization_id=org.id, action="plan.changed"))
    assert event.actor_label == "CLI" and event.details["reason"] == "contract signed"
    assert cli("orgs", "set-plan", "no-such-org", "pro").exit_code != 0
    assert cli("orgs", "set-plan", org.slug, "platinum").exit_code != 0
    assert db.session.get(Organization, org.id).plan == "enterprise"


def test_keys_create_prints_only_the_key(cli, org, app):
    result = cli("keys", "create", "--org", org.slug, "--env", "live", "--name", "Deploy bot")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and result.stdout == lines[0] + "\n"
    plaintext = lines[0]
    assert keyformat.parse(plaintext).environment == "live"
    row = db.session.scalar(sa.select(ApiKey).filter_by(organization_id=org.id))
    assert row.key_hash == keyformat.key_hash(plaintext, app.config["API_KEY_PEPPER"])
    assert row.name == "Deploy bot" and plaintext not in result.stderr
    assert cli("keys", "create", "--org", "nope", "--name", "x").exit_code != 0
    assert cli("keys", "create", "--org", org.slug, "--env", "prod", "--name", "x").exit_code != 0
    assert _keys(org.id) == 1


def test_keys_create_with_policy(cli, org):
    result = cli(
        "keys", "create", "--org", org.slug, "--name", "Scoped", "--scope", "files:write", "--scope", "search:read",
        "--allow-ip", "10.0.0.0/8", "--allow-ip", "2001:db8::1", "--meta", "team=billing", "--meta", "tier=2",
        "--rate-limit", "5", "--external-id", "cli-1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 1 and keyformat.parse(result.stdout.strip()) is not None
    row = db.session.scalar(sa.select(ApiKey).filter_by(organization_id=org.id))
    assert row.scopes == ["search:read", "files:write"]
    assert row.allowed_ips == ["10.0.0.0/8", "2001:db8::1/128"]
    assert (row.meta, row.rate_limit, row.external_id) == ({"team": "billing", "tier": "2"}, 5, "cli-1")


@pytest.mark.parametrize(
    "bad",
    [
        ("--scope", "files:delete"),
        ("--allow-ip", "10.0.0.1/8"),
        ("--meta", "novalue"),
        ("--rate-limit", "0"),
        ("--rate-limit", "61"),  # above the Free plan's limit
        ("--external-id", "x" * 129),
    ],
)
def test_keys_create_refuses_bad_policy(cli, org, bad):
    result = cli("keys", "create", "--org", org.slug, "--name", "Bad", *bad)
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert _keys(org.id) == 0


def test_keys_revoke(cli, org, owner):
    issued = factories.api_key(org, owner)
    result = cli("keys", "revoke", str(issued.api_key.id))
    assert result.exit_code == 0, result.output
    assert issued.api_key.hint in result.output
    assert db.session.get(ApiKey, issued.api_key.id).revoked_at is not None
    event = db.session.scalar(sa.select(AuditEvent).filter_by(action="key.revoked"))
    assert event.actor_label == "CLI"
    assert cli("keys", "revoke", str(issued.api_key.id)).exit_code != 0  # already revoked
    assert cli("keys", "revoke", "not-a-uuid").exit_code != 0
    assert cli("keys", "revoke", "00000000-0000-0000-0000-000000000000").exit_code != 0


def test_seeded_demo_logins_work(app, client):
    from portal.commands.seed import DEMO_OWNER, DEMO_STAFF

    output = app.test_cli_runner().invoke(args=["seed"]).output
    assert f"{DEMO_OWNER[0]} / {DEMO_OWNER[2]}" in output and f"{DEMO_STAFF[0]} / {DEMO_STAFF[2]}" in output
    response = client.post("/login", data={"email": DEMO_OWNER[0], "password": DEMO_OWNER[2]})
    assert response.status_code == 302
    assert client.get("/orgs/default/keys/").status_code == 200
    client.post("/logout")
    client.post("/login", data={"email": DEMO_STAFF[0], "password": DEMO_STAFF[2]})
    assert client.get("/staff/?q=default").status_code == 200
