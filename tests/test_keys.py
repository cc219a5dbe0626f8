from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from portal.extensions import db
from portal.keys import format as keyformat
from portal.models import ApiKey, AuditEvent
from tests import factories


def _create(client, org, **data):
    form = {"name": "Billing worker", "environment": "test", "request_token": "tok-" + data.pop("token", "1")}
    form.update(data)
    return client.post(f"/orgs/{org.slug}/keys/new", data=form)


def test_key_format_has_checksum_and_entropy():
    key = keyformat.generate("live")
    assert key.startswith("pk_live_") and len(key) == keyformat.KEY_LENGTH
    assert keyformat.parse(key).environment == "live"
    mistyped = key[:-7] + ("A" if key[-7] != "A" else "B") + key[-6:]
    assert keyformat.parse(mistyped) is None
    assert keyformat.parse(key[:-1]) is None
    assert keyformat.parse("sk_live_" + key[8:]) is None
    assert keyformat.parse(12345) is None
    assert len({keyformat.generate("test") for _ in range(200)}) == 200


def test_create_shows_key_once_and_stores_only_hash(client, auth, org, member, app):
    auth.login(member)
    response = _create(client, org)
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_data(as_text=True)
    plaintext = body.split('id="new-key" class="secret-value">')[1].split("<")[0]
    assert keyformat.parse(plaintext) is not None
    assert f"Bearer {plaintext}" in body  # the ready curl line
    row = db.session.scalar(sa.select(ApiKey).where(ApiKey.organization_id == org.id))
    assert row.key_hash == keyformat.key_hash(plaintext, app.config["API_KEY_PEPPER"])
    assert row.hint == keyformat.hint(plaintext) and plaintext not in row.hint
    stored = db.session.execute(sa.text("SELECT row_to_json(api_keys)::text FROM api_keys")).scalar()
    assert plaintext not in stored
    # The list and detail pages never show it again.
    assert plaintext not in client.get(f"/orgs/{org.slug}/keys/").get_data(as_text=True)
    assert plaintext not in client.get(f"/orgs/{org.slug}/keys/{row.id}").get_data(as_text=True)


def test_resubmitting_the_create_form_does_not_reshow_or_duplicate(client, auth, org, member):
    auth.login(member)
    _create(client, org, token="same")
    again = _create(client, org, token="same")
    assert again.status_code == 302
    follow = client.get(again.headers["Location"])
    assert "already created" in follow.get_data(as_text=True)
    assert db.session.scalar(sa.select(sa.func.count()).select_from(ApiKey)) == 1


def test_create_rejects_bad_input(client, auth, org, member):
    auth.login(member)
    yesterday = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
    response = _create(client, org, name="x" * 101, expires_on=yesterday)
    assert response.status_code == 422
    body = response.get_data(as_text=True)
    assert "Field cannot be longer than 100 characters." in body
    assert "Pick a date after today." in body
    response = _create(client, org, name="", environment="prod")
    assert response.status_code == 422
    assert db.session.scalar(sa.select(sa.func.count()).select_from(ApiKey)) == 0


def test_developer_cannot_create_live_keys_admin_can(client, auth, org, member):
    auth.login(member)
    assert _create(client, org, environment="live").status_code == 422  # not a choice for developers
    admin = factories.member(org, "admin")
    auth.logout()
    auth.login(admin)
    response = _create(client, org, environment="live", token="2")
    assert response.status_code == 200 and "pk_live_" in response.get_data(as_text=True)


def test_viewer_reads_but_cannot_create(client, auth, org, owner):
    factories.api_key(org, owner, name="Existing")
    viewer = factories.member(org, "viewer")
    auth.login(viewer)
    assert "Existing" in client.get(f"/orgs/{org.slug}/keys/").get_data(as_text=True)
    assert client.get(f"/orgs/{org.slug}/keys/new").status_code == 403


def test_plan_key_limit(client, auth, org, owner):
    for n in range(org.plan_info.max_keys):
        factories.api_key(org, owner, name=f"k{n}")
    auth.login(owner)
    response = _create(client, org)
    assert response.status_code == 422
    assert "allows 5 active keys" in response.get_data(as_text=True)


def test_revoke_asks_first_then_is_post_and_audited(client, auth, org, member):
    issued = factories.api_key(org, member)
    auth.login(member)
    url = f"/orgs/{org.slug}/keys/{issued.api_key.id}/revoke"
    page = client.get(url)  # the confirmation: nothing happens on GET
    assert page.status_code == 200 and "What will break" in page.get_data(as_text=True)
    db.session.refresh(issued.api_key)
    assert issued.api_key.revoked_at is None
    assert client.post(url).status_code == 302
    db.session.refresh(issued.api_key)
    assert issued.api_key.revoked_at is not None
    assert issued.api_key.status_at(datetime.now(UTC)) == "revoked"
    event = db.session.scalar(sa.select(AuditEvent).where(AuditEvent.action == "key.revoked"))
    assert event.organization_id == org.id and event.actor_id == member.id


def test_roll_with_grace_keeps_old_key_until_then(client, auth, org, member):
    issued = factories.api_key(org, member, name="Worker")
    auth.login(member)
    response = client.post(f"/orgs/{org.slug}/keys/{issued.api_key.id}/roll", data={"grace": "1h"})
    assert response.status_code == 200
    new_plain = response.get_data(as_text=True).split('id="new-key" class="secret-value">')[1].split("<")[0]
    db.session.refresh(issued.api_key)
    old = issued.api_key
    new = db.session.get(ApiKey, old.replaced_by_id)
    assert new.name == "Worker" and new.hint == keyformat.hint(new_plain)
    now = datetime.now(UTC)
    assert old.status_at(now) == "expiring"
    assert old.status_at(now + timedelta(hours=1, seconds=1)) == "revoked"
    assert db.session.scalar(sa.select(AuditEvent).where(AuditEvent.action == "key.rolled"))


def test_roll_now_stops_the_old_key_immediately(client, auth, org, member):
    issued = factories.api_key(org, member)
    auth.login(member)
    client.post(f"/orgs/{org.slug}/keys/{issued.api_key.id}/roll", data={"grace": "now"})
    db.session.refresh(issued.api_key)
    assert issued.api_key.status_at(datetime.now(UTC)) == "revoked"


def test_rename_and_expiry(client, auth, org, member):
    issued = factories.api_key(org, member)
    auth.login(member)
    base = f"/orgs/{org.slug}/keys/{issued.api_key.id}"
    assert client.post(f"{base}/rename", data={"name": "Renamed"}).status_code == 302
    future = (datetime.now(UTC) + timedelta(days=30)).date()
    assert client.post(f"{base}/expiry", data={"expires_on": future.isoformat()}).status_code == 302
    db.session.refresh(issued.api_key)
    assert issued.api_key.name == "Renamed"
    assert issued.api_key.expires_at.date() == future
    assert client.post(f"{base}/rename", data={"name": ""}).status_code == 422


def test_other_orgs_keys_are_404(client, auth, org, member):
    other_org = factories.org()
    other_owner = factories.member(other_org, "owner")
    foreign = factories.api_key(other_org, other_owner)
    auth.login(member)
    assert client.get(f"/orgs/{org.slug}/keys/{foreign.api_key.id}").status_code == 404
    assert client.post(f"/orgs/{org.slug}/keys/{foreign.api_key.id}/revoke").status_code == 404
    assert client.get(f"/orgs/{other_org.slug}/keys/").status_code == 404
    assert client.get(f"/orgs/{org.slug}/keys/not-a-uuid").status_code == 404
    db.session.refresh(foreign.api_key)
    assert foreign.api_key.revoked_at is None


def test_list_is_paginated(client, auth, app, owner):
    big = factories.org(plan="pro")
    factories.member(big, "owner", owner)
    for n in range(25):
        factories.api_key(big, owner, name=f"key-{n:02d}")
    auth.login(owner)
    first = client.get(f"/orgs/{big.slug}/keys/").get_data(as_text=True)
    second = client.get(f"/orgs/{big.slug}/keys/?page=2").get_data(as_text=True)
    assert "Page 1 of 2" in first and "Page 2 of 2" in second
    on_first = {f"key-{n:02d}" for n in range(25) if f">key-{n:02d}<" in first}
    on_second = {f"key-{n:02d}" for n in range(25) if f">key-{n:02d}<" in second}
    assert len(on_first) == 20 and len(on_second) == 5 and not on_first & on_second


def test_key_body_carries_at_least_160_bits():
    import math

    body = keyformat.generate("test")[len("pk_test_") : -keyformat.CHECKSUM_LENGTH]
    assert len(body) == keyformat.BODY_LENGTH and set(body) <= set(keyformat.ALPHABET)
    assert len(body) * math.log2(len(keyformat.ALPHABET)) >= 160


@pytest.mark.parametrize(
    ("grace", "length"), [("1h", timedelta(hours=1)), ("24h", timedelta(hours=24)), ("7d", timedelta(days=7))]
)
def test_every_roll_grace_option_keeps_the_old_key_that_long(client, auth, org, member, grace, length):
    issued = factories.api_key(org, member)
    auth.login(member)
    client.post(f"/orgs/{org.slug}/keys/{issued.api_key.id}/roll", data={"grace": grace})
    db.session.refresh(issued.api_key)
    stops = issued.api_key.revoked_at - datetime.now(UTC)
    assert length - timedelta(minutes=1) < stops <= length


def test_rolled_keys_in_grace_count_against_the_plan_limit(client, auth, org, owner):
    keys = [factories.api_key(org, owner, name=f"k{n}") for n in range(org.plan_info.max_keys)]
    auth.login(owner)
    # Rolling is always allowed, even at the limit: replacing a leaked key must never be blocked.
    assert client.post(f"/orgs/{org.slug}/keys/{keys[0].api_key.id}/roll", data={"grace": "7d"}).status_code == 200
    # But the old key still works for 7 days, so no new key fits until it stops.
    response = _create(client, org, token="after-roll")
    assert response.status_code == 422 and "allows 5 active keys" in response.get_data(as_text=True)


def test_create_with_a_future_expiry_stores_the_end_of_that_day(client, auth, org, member):
    auth.login(member)
    day = (datetime.now(UTC) + timedelta(days=10)).date()
    assert _create(client, org, expires_on=day.isoformat()).status_code == 200
    row = db.session.scalar(sa.select(ApiKey).where(ApiKey.organization_id == org.id))
    assert row.expires_at.date() == day and (row.expires_at.hour, row.expires_at.minute) == (23, 59)
