"""Every key change leaves an audit event an organization's members can read, saying who, what and from where."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from portal.extensions import db
from portal.models import AuditEvent
from tests import factories


def _events(action: str) -> list[AuditEvent]:
    return list(db.session.scalars(sa.select(AuditEvent).where(AuditEvent.action == action)))


def test_rename_and_expiry_are_audited(client, auth, org, member):
    key = factories.api_key(org, member, name="Worker").api_key
    auth.login(member)
    base = f"/orgs/{org.slug}/keys/{key.id}"
    assert client.post(f"{base}/rename", data={"name": "Billing worker"}).status_code == 302
    [renamed] = _events("key.renamed")
    assert renamed.organization_id == org.id and renamed.actor_id == member.id
    assert renamed.target_type == "api_key" and renamed.target_id == str(key.id)
    assert renamed.details["from"] == "Worker" and renamed.details["to"] == "Billing worker"

    future = (datetime.now(UTC) + timedelta(days=30)).date()
    assert client.post(f"{base}/expiry", data={"expires_on": future.isoformat()}).status_code == 302
    [changed] = _events("key.expiry_changed")
    assert changed.organization_id == org.id and changed.actor_id == member.id
    assert changed.target_id == str(key.id)
    assert datetime.fromisoformat(changed.details["expires_at"]).date() == future


def test_rejected_changes_are_not_audited(client, auth, org, member):
    key = factories.api_key(org, member).api_key
    auth.login(member)
    assert client.post(f"/orgs/{org.slug}/keys/{key.id}/rename", data={"name": ""}).status_code == 422
    assert _events("key.renamed") == []


def test_cli_key_creation_is_audited_as_cli(app, org):
    result = app.test_cli_runner().invoke(args=["keys", "create", "--org", org.slug, "--name", "Cron job"])
    assert result.exit_code == 0, result.output
    [created] = _events("key.created")
    assert created.actor_label == "CLI" and created.actor_id is None
    assert created.organization_id == org.id
    assert created.details["name"] == "Cron job" and created.details["environment"] == "test"
    assert created.ip is None


def test_audit_page_shows_revoked_and_rolled_keys_readably(client, auth, org, owner):
    doomed = factories.api_key(org, owner, name="Old worker").api_key
    rolled = factories.api_key(org, owner, name="Web app").api_key
    auth.login(owner)
    assert client.post(f"/orgs/{org.slug}/keys/{doomed.id}/revoke").status_code == 302
    assert client.post(f"/orgs/{org.slug}/keys/{rolled.id}/roll", data={"grace": "24h"}).status_code == 200
    db.session.refresh(rolled)
    new_hint = db.session.get(type(rolled), rolled.replaced_by_id).hint

    response = client.get(f"/orgs/{org.slug}/audit")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert "Key revoked" in page and "Key rolled" in page
    assert f"{owner.display_name} &lt;{owner.email}&gt;" in page  # who, as a name and address
    assert doomed.hint in page  # what, by the hint people recognise
    assert "Old key" in page and rolled.hint in page and "New key" in page and new_hint in page
    stops = rolled.revoked_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    assert "Old key stops" in page and stops in page
    # Never the raw machine form in the log itself (the action filter's option values are codes, unseen).
    table = page[page.index('<table class="table audit">') :]
    for raw in ("key.revoked", "key.rolled", "old_key_stops_at", "new_hint", rolled.revoked_at.isoformat()):
        assert raw not in table


def test_audit_event_keeps_the_client_address(client, auth, org, member):
    key = factories.api_key(org, member).api_key
    auth.login(member)
    response = client.post(f"/orgs/{org.slug}/keys/{key.id}/revoke", environ_base={"REMOTE_ADDR": "203.0.113.9"})
    assert response.status_code == 302
    [revoked] = _events("key.revoked")
    assert str(revoked.ip) == "203.0.113.9"
    stored = db.session.execute(
        sa.text("SELECT host(ip) FROM audit_events WHERE id = :id"), {"id": revoked.id}
    ).scalar_one()
    assert stored == "203.0.113.9"
