"""Rotation watch: a rolled key's page shows the old key's calls since the roll and when it is safe to revoke."""

from __future__ import annotations

import re
from datetime import timedelta

import sqlalchemy as sa

from portal.extensions import db
from portal.keys import services as key_services
from portal.models import ApiKey, AuditEvent
from portal.timeutil import utcnow
from portal.usage import maintenance
from tests import factories
from tests.api_helpers import verify
from tests.usage_helpers import event, record


def _roll(org, owner, *, ago: timedelta = timedelta(0), grace=timedelta(days=7), environment="test"):
    """A key rolled ``ago`` (its replacement's creation time is the roll), still in its grace period."""
    old = factories.api_key(org, owner, name="Billing", environment=environment)
    new = key_services.roll_key(org, old.api_key, grace, owner)
    db.session.execute(sa.update(ApiKey).where(ApiKey.id == new.api_key.id).values(created_at=utcnow() - ago))
    db.session.commit()
    return old


def _page(client, org, key, **args):
    return client.get(f"/orgs/{org.slug}/keys/{key.api_key.id}", query_string=args)


def _hour_rows(body):
    table = body[body.index('id="rotation-hours"') :]
    table = table[: table.index("</table>")]
    return [int(n) for n in re.findall(r'<td class="num">(\d+)</td>', table)]


def test_calls_since_the_roll_are_shown_per_hour_from_the_rollups(client, auth, org, owner):
    old = _roll(org, owner, ago=timedelta(hours=30))
    now = utcnow()
    record(
        [event(old.api_key, now - timedelta(hours=40))]  # before the roll: not counted
        + [event(old.api_key, now - timedelta(hours=20))] * 3
        + [event(old.api_key, now - timedelta(hours=2), outcome="rate_limited")] * 2
    )
    maintenance.fold()
    db.session.execute(sa.text("DELETE FROM api_key_usage"))  # the page reads the rollups only
    db.session.commit()
    auth.login(owner)

    body = _page(client, org, old).get_data(as_text=True)

    assert "Rotation watch" in body and "Calls with it since the roll: <strong>5</strong>" in body
    rows = _hour_rows(body)
    assert sorted(n for n in rows if n) == [2, 3] and len(rows) >= 30
    assert "Still in use" in body and "Safe to revoke now" not in body


def test_real_calls_with_the_old_key_show_up(client, auth, org, owner):
    old = _roll(org, owner)
    for _ in range(3):
        assert verify(client, old.plaintext).status_code == 200
    auth.login(owner)
    body = _page(client, org, old).get_data(as_text=True)
    assert "Calls with it since the roll: <strong>3</strong>" in body and "Still in use" in body


def test_quiet_for_n_hours_says_safe_to_revoke_and_one_click_revokes(client, auth, org, owner):
    old = _roll(org, owner, ago=timedelta(hours=30))
    record([event(old.api_key, utcnow() - timedelta(hours=3))])
    auth.login(owner)
    assert "Still in use" in _page(client, org, old).get_data(as_text=True)  # default: 24 hours
    body = _page(client, org, old, quiet_hours=2).get_data(as_text=True)
    assert "Safe to revoke now" in body and "you asked for 2" in body
    assert f"/keys/{old.api_key.id}/revoke" in body and "Revoke the old key now" in body

    response = client.post(f"/orgs/{org.slug}/keys/{old.api_key.id}/revoke")

    assert response.status_code == 302
    assert verify(client, old.plaintext).get_json()["code"] == "revoked"
    assert "Rotation watch" not in _page(client, org, old).get_data(as_text=True)


def test_no_calls_at_all_since_an_old_roll_is_safe_by_default(client, auth, org, owner):
    old = _roll(org, owner, ago=timedelta(hours=25))
    auth.login(owner)
    body = _page(client, org, old).get_data(as_text=True)
    assert "Safe to revoke now" in body and "no calls for 25 hours" in body


def test_a_fresh_roll_is_not_yet_safe(client, auth, org, owner):
    old = _roll(org, owner)
    auth.login(owner)
    assert "Still in use" in _page(client, org, old).get_data(as_text=True)


def test_a_bad_number_of_hours_is_a_form_error(client, auth, org, owner):
    old = _roll(org, owner, ago=timedelta(hours=30))
    auth.login(owner)
    for bad in ("abc", "0", "100000", ""):
        response = _page(client, org, old, quiet_hours=bad)
        body = response.get_data(as_text=True)
        assert response.status_code == 200 and 'class="error"' in body, bad
        assert "you asked for 24" in body  # the default stays in force


def test_keys_not_in_a_grace_period_have_no_watch(client, auth, org, owner, api_key):
    auth.login(owner)
    assert "Rotation watch" not in _page(client, org, api_key).get_data(as_text=True)


def test_the_grace_period_can_be_extended_and_it_is_audited(client, auth, org, owner):
    old = _roll(org, owner, grace=timedelta(hours=1))
    before = db.session.get(ApiKey, old.api_key.id).revoked_at
    auth.login(owner)
    response = client.post(f"/orgs/{org.slug}/keys/{old.api_key.id}/grace", data={"extend_hours": "48"})
    assert response.status_code == 302
    after = db.session.get(ApiKey, old.api_key.id).revoked_at
    assert after - before == timedelta(hours=48)
    [audit] = db.session.scalars(sa.select(AuditEvent).filter_by(action="key.grace_extended")).all()
    assert audit.actor_id == owner.id and audit.details["hint"] == old.api_key.hint
    assert "grace period extended" in client.get(f"/orgs/{org.slug}/audit").get_data(as_text=True)


def test_the_extension_is_bounded_and_bad_input_is_a_form_error(client, auth, org, owner, api_key):
    old = _roll(org, owner, grace=timedelta(days=7))
    before = db.session.get(ApiKey, old.api_key.id).revoked_at
    auth.login(owner)
    url = f"/orgs/{org.slug}/keys/{old.api_key.id}/grace"
    response = client.post(url, data={"extend_hours": str(24 * 24)})  # 7 + 24 days > 30 days from now
    assert response.status_code == 422 and "at most 30 days from now" in response.get_data(as_text=True)
    for bad in ("", "abc", "0", "-5", "99999"):
        response = client.post(url, data={"extend_hours": bad})
        assert response.status_code == 422 and 'class="error"' in response.get_data(as_text=True)
    assert db.session.get(ApiKey, old.api_key.id).revoked_at == before
    # A key that was never rolled has no grace period to extend.
    response = client.post(f"/orgs/{org.slug}/keys/{api_key.api_key.id}/grace", data={"extend_hours": "1"})
    assert response.status_code == 302
    assert "Only a rolled key" in client.get(response.headers["Location"]).get_data(as_text=True)
    assert not db.session.scalars(sa.select(AuditEvent).filter_by(action="key.grace_extended")).all()


def test_extending_a_live_key_needs_an_admin(client, auth, org, owner, member):
    old = _roll(org, owner, environment="live")
    auth.login(member)  # a developer
    body = _page(client, org, old).get_data(as_text=True)
    assert "Rotation watch" in body and "Extend grace period" not in body
    response = client.post(f"/orgs/{org.slug}/keys/{old.api_key.id}/grace", data={"extend_hours": "1"})
    assert response.status_code == 403
