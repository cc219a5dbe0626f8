"""Who may change which keys: developers manage test keys only, viewers only look, admins manage live keys."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from portal.extensions import db
from portal.models import ApiKey, AuditEvent
from tests import factories

FUTURE = (datetime.now(UTC) + timedelta(days=30)).date().isoformat()
ACTIONS = {
    "revoke": {},
    "roll": {"grace": "now"},
    "rename": {"name": "Hijacked"},
    "expiry": {"expires_on": FUTURE},
}


def _snapshot(api_key: ApiKey) -> tuple:
    db.session.refresh(api_key)
    return api_key.name, api_key.expires_at, api_key.revoked_at, api_key.replaced_by_id


def _key_count() -> int:
    return db.session.scalar(sa.select(sa.func.count()).select_from(ApiKey))


@pytest.mark.parametrize("action", sorted(ACTIONS))
def test_developer_cannot_change_a_live_key(client, auth, org, owner, member, action):
    live = factories.api_key(org, owner, environment="live", name="Production").api_key
    before, keys_before = _snapshot(live), _key_count()
    auth.login(member)
    response = client.post(f"/orgs/{org.slug}/keys/{live.id}/{action}", data=ACTIONS[action])
    assert response.status_code == 403
    assert _snapshot(live) == before
    assert _key_count() == keys_before
    assert db.session.scalar(sa.select(AuditEvent).where(AuditEvent.action != "key.created")) is None


@pytest.mark.parametrize("action", sorted(ACTIONS))
def test_viewer_cannot_change_a_test_key(client, auth, org, owner, action):
    key = factories.api_key(org, owner, name="Sandbox").api_key
    viewer = factories.member(org, "viewer")
    before, keys_before = _snapshot(key), _key_count()
    auth.login(viewer)
    response = client.post(f"/orgs/{org.slug}/keys/{key.id}/{action}", data=ACTIONS[action])
    assert response.status_code == 403
    assert _snapshot(key) == before
    assert _key_count() == keys_before


def test_viewer_key_page_has_no_manage_forms(client, auth, org, owner, member):
    key = factories.api_key(org, owner, name="Sandbox").api_key
    url = f"/orgs/{org.slug}/keys/{key.id}"
    # A developer sees the forms on a test key, so their absence below means something.
    auth.login(member)
    developer_page = client.get(url).get_data(as_text=True)
    assert "Revoke key" in developer_page and "Roll key" in developer_page
    auth.logout()
    auth.login(factories.member(org, "viewer"))
    response = client.get(url)
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert "Sandbox" in page
    for text in (
        "Revoke key",
        "Roll key",
        f"/keys/{key.id}/revoke",
        f"/keys/{key.id}/roll",
        f"/keys/{key.id}/rename",
        f"/keys/{key.id}/expiry",
    ):
        assert text not in page


def test_developer_key_page_for_a_live_key_has_no_manage_forms(client, auth, org, owner, member):
    live = factories.api_key(org, owner, environment="live", name="Production").api_key
    auth.login(member)
    page = client.get(f"/orgs/{org.slug}/keys/{live.id}").get_data(as_text=True)
    assert "Production" in page
    assert "Revoke key" not in page and "Roll key" not in page


def test_admin_can_revoke_a_live_key(client, auth, org, owner):
    live = factories.api_key(org, owner, environment="live", name="Production").api_key
    admin = factories.member(org, "admin")
    auth.login(admin)
    assert "Revoke key" in client.get(f"/orgs/{org.slug}/keys/{live.id}").get_data(as_text=True)
    response = client.post(f"/orgs/{org.slug}/keys/{live.id}/revoke", data={"confirm_name": "Production"})
    assert response.status_code == 302
    db.session.refresh(live)
    assert live.status_at(datetime.now(UTC)) == "revoked"
    assert live.revoked_by_id == admin.id
    event = db.session.scalar(sa.select(AuditEvent).where(AuditEvent.action == "key.revoked"))
    assert event.actor_id == admin.id and event.target_id == str(live.id)
