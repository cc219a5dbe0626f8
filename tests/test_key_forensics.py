"""Forensics: who uses a key, from where, before it is revoked or rolled."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from portal.api import get_verifier
from portal.extensions import db
from portal.timeutil import utcnow
from portal.usage import maintenance
from portal.verification.usage_writer import BufferedRecorder
from tests import factories
from tests.api_helpers import usage_rows, verify
from tests.usage_helpers import event, html_tables, record

PY, NODE, CURL = "procode-python/2.4.1", "procode-node/1.9.0", "curl/8.5.0"


def _page(client, org, key, **args):
    return client.get(f"/orgs/{org.slug}/keys/{key.id}", query_string=args)


def _clients(html: str) -> list[list[str]]:
    return html_tables(html).get("clients-table", [])[1:]


def test_verification_records_the_callers_address_and_user_agent(client, api_key):
    response = verify(client, api_key.plaintext, client_ip="203.0.113.7", user_agent=PY, endpoint="/v1/embed")
    assert response.status_code == 200
    row = usage_rows()[0]
    assert (str(row.client_ip), row.user_agent, row.endpoint) == ("203.0.113.7", PY, "/v1/embed")
    verify(client, api_key.plaintext)  # neither given: recorded as unknown, not guessed
    assert (usage_rows()[1].client_ip, usage_rows()[1].user_agent) == (None, None)


def test_one_flush_of_many_calls_stores_each_calls_text_verbatim(app, api_key):
    """The usage writer renders a batch column by column: text that needs escaping, or a missing value, in one
    row must not change what any row of the batch records."""
    recorder = get_verifier(app).recorder
    key = api_key.api_key
    at = utcnow()
    calls = [
        ("/v1/plain", "203.0.113.7", PY),
        ('/it\'s "quoted"', None, 'agent "with" quotes \\ and a backslash'),
        ("NULL", "2001:db8::5", "ünïcode-agent/1.0"),
        ("/v1/x", "203.0.113.8", None),
        ("{a,b}", "203.0.113.9", "\\N"),
    ]
    ids = (str(key.id), str(key.organization_id))
    for n, (endpoint, ip, agent) in enumerate(calls):
        row = (*ids, at + timedelta(microseconds=n), endpoint, 200, 1.5, "ok", ip, agent)
        BufferedRecorder.add(recorder, row)  # buffered, not flushed one by one
    assert recorder.flush() == len(calls)
    stored = [(r.endpoint, None if r.client_ip is None else str(r.client_ip), r.user_agent) for r in usage_rows()]
    assert stored == calls
    db.session.refresh(key)
    assert key.last_used_at == at + timedelta(microseconds=len(calls) - 1)


def test_a_long_user_agent_is_kept_to_256_characters_and_bad_ones_are_refused(client, api_key):
    assert verify(client, api_key.plaintext, user_agent="x" * 512).status_code == 200
    assert usage_rows()[0].user_agent == "x" * 256
    for bad in ("x" * 513, "tab\there", 42, ["a"]):
        response = verify(client, api_key.plaintext, user_agent=bad)
        assert response.status_code == 400
        assert response.get_json()["error"]["code"] == "invalid_user_agent"
    assert len(usage_rows()) == 1  # a refused request is not a call


def test_the_decorator_records_the_requests_address_and_user_agent(client, api_key):
    headers = {"Authorization": f"Bearer {api_key.plaintext}", "User-Agent": NODE}
    response = client.get("/v1/whoami", headers=headers, environ_base={"REMOTE_ADDR": "198.51.100.4"})
    assert response.status_code == 200
    row = usage_rows()[0]
    assert (str(row.client_ip), row.user_agent, row.endpoint) == ("198.51.100.4", NODE, "/v1/whoami")


@pytest.fixture
def history(org, owner):
    """One key's calls: a PY client now and 3 days ago, a NODE client 10 days ago, CURL 40 days ago."""
    key = factories.api_key(org, owner, name="Backend").api_key
    now = utcnow()
    record(
        [
            event(key, now - timedelta(minutes=5), client_ip="203.0.113.10", user_agent=PY, endpoint="/v1/files"),
            event(key, now - timedelta(hours=2), client_ip="203.0.113.10", user_agent=PY),
            event(key, now - timedelta(days=3), client_ip="203.0.113.10", user_agent=PY),
            event(key, now - timedelta(days=3), "rate_limited", client_ip="2001:db8::5", user_agent=PY),
            event(key, now - timedelta(days=10), client_ip="198.51.100.20", user_agent=NODE),
            event(key, now - timedelta(days=40), client_ip="192.0.2.1", user_agent=CURL),
        ]
    )
    db.session.commit()
    return key


def test_key_page_shows_the_last_call_and_clients_per_window(client, auth, org, owner, history):
    auth.login(owner)
    html = _page(client, org, history).get_data(as_text=True)  # the default window: 7 days
    assert "Last call" in html and "203.0.113.10" in html and "/v1/files" in html
    rows = _clients(html)
    assert [(r[0], r[1], r[2]) for r in rows] == [("203.0.113.10", PY, "3"), ("2001:db8::5", PY, "1")]
    day = _clients(_page(client, org, history, clients="24h").get_data(as_text=True))
    assert [(r[0], r[2]) for r in day] == [("203.0.113.10", "2")]
    month = _clients(_page(client, org, history, clients="30d").get_data(as_text=True))
    assert [r[0] for r in month] == ["203.0.113.10", "2001:db8::5", "198.51.100.20"]
    assert "192.0.2.1" not in _page(client, org, history, clients="30d").get_data(as_text=True)
    # an unknown window falls back to the default instead of failing
    assert _clients(_page(client, org, history, clients="1y").get_data(as_text=True)) == rows


def test_first_and_last_seen_span_the_window(client, auth, org, owner):
    key = factories.api_key(org, owner).api_key
    now = utcnow().replace(second=0, microsecond=0)
    times = [now - timedelta(days=3, hours=1), now - timedelta(days=1), now - timedelta(minutes=5)]
    record([event(key, at, client_ip="203.0.113.10", user_agent=PY) for at in times])
    db.session.commit()
    auth.login(owner)
    [row] = _clients(_page(client, org, key, clients="7d").get_data(as_text=True))
    fmt = "%Y-%m-%d %H:%M UTC"
    assert row[2:] == ["3", times[0].strftime(fmt), times[2].strftime(fmt)]


def test_recent_clients_come_from_the_rollup_and_outlive_pruned_events(client, auth, org, owner, history):
    db.session.execute(sa.text("DELETE FROM api_key_usage WHERE key_id = :k"), {"k": history.id})  # as retention would
    auth.login(owner)
    html = _page(client, org, history, clients="7d").get_data(as_text=True)
    assert [r[0] for r in _clients(html)] == ["203.0.113.10", "2001:db8::5"]


def test_client_rollup_matches_the_raw_events_and_rebuilds(org, owner, history):
    assert maintenance.rollup_mismatches(org.id) == {}
    maintenance.rebuild_rollups(org.id)
    assert maintenance.rollup_mismatches(org.id) == {}


def test_revoke_confirmation_shows_the_last_24_hours_before_anything_happens(client, auth, org, owner, history):
    auth.login(owner)
    response = client.get(f"/orgs/{org.slug}/keys/{history.id}/revoke")
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "2 calls</strong> in the last 24 hours (2 succeeded) from <strong>1 client" in html
    assert [r[0] for r in _clients(html)] == ["203.0.113.10"]
    db.session.refresh(history)
    assert history.revoked_at is None
    assert client.post(f"/orgs/{org.slug}/keys/{history.id}/revoke").status_code == 302
    db.session.refresh(history)
    assert history.revoked_at is not None
    # a key that no longer works has nothing to confirm
    assert client.get(f"/orgs/{org.slug}/keys/{history.id}/revoke").status_code == 302


def test_roll_confirmation_shows_who_still_uses_the_key(client, auth, org, owner, history):
    auth.login(owner)
    html = client.get(f"/orgs/{org.slug}/keys/{history.id}/roll", query_string={"grace": "1h"}).get_data(as_text=True)
    assert "2 calls</strong> in the last 24 hours" in html
    assert '<option selected value="1h">' in html or 'value="1h" selected' in html
    bad = client.post(f"/orgs/{org.slug}/keys/{history.id}/roll", data={"grace": "forever"})
    assert bad.status_code == 422 and "Not a valid choice" in bad.get_data(as_text=True)
    db.session.refresh(history)
    assert history.replaced_by_id is None


def test_an_unused_key_says_nothing_will_break(client, auth, org, owner):
    key = factories.api_key(org, owner).api_key
    auth.login(owner)
    html = client.get(f"/orgs/{org.slug}/keys/{key.id}/revoke").get_data(as_text=True)
    assert "No calls in the last 24 hours, and none ever" in html
    assert "No calls with this key yet." in _page(client, org, key).get_data(as_text=True)


def test_confirmations_need_the_right_to_manage_the_key(client, auth, org, owner, history):
    other = factories.org()
    auth.login(factories.member(other, "owner"))  # another organization's owner, through their own org
    assert client.get(f"/orgs/{other.slug}/keys/{history.id}/revoke").status_code == 404
    assert client.get(f"/orgs/{other.slug}/keys/{history.id}").status_code == 404


def test_viewers_see_clients_but_cannot_open_a_confirmation(client, auth, org, history):
    auth.login(factories.member(org, "viewer"))
    assert "203.0.113.10" in _page(client, org, history).get_data(as_text=True)
    assert client.get(f"/orgs/{org.slug}/keys/{history.id}/revoke").status_code == 403


def test_hourly_clients_are_kept_two_days_and_daily_ones_stay(org, owner, history):
    maintenance.fold_clients()
    hourly = db.session.execute(
        sa.text("SELECT min(bucket) FROM usage_key_clients_hourly WHERE key_id = :k"), {"k": history.id}
    ).scalar_one()
    daily = db.session.execute(
        sa.text("SELECT count(*) FROM usage_key_clients_daily WHERE key_id = :k"), {"k": history.id}
    ).scalar_one()
    now = utcnow()
    assert hourly >= now - timedelta(hours=49)
    recent_days = {(now - timedelta(minutes=5)).date(), (now - timedelta(hours=2)).date()}
    assert daily == len(recent_days) + 2 + 1 + 1  # one client today (and maybe yesterday), two 3 days ago, ...


def test_a_live_key_is_revoked_only_with_its_name_typed(client, auth, org, owner):
    live = factories.api_key(org, owner, name="Checkout live", environment="live").api_key
    auth.login(owner)
    url = f"/orgs/{org.slug}/keys/{live.id}/revoke"
    assert "Type the key" in client.get(url).get_data(as_text=True)
    for typed in ("", "checkout live", "Checkout"):
        refused = client.post(url, data={"confirm_name": typed})
        assert refused.status_code == 422 and "exactly to confirm" in refused.get_data(as_text=True)
    db.session.refresh(live)
    assert live.revoked_at is None
    assert client.post(url, data={"confirm_name": "Checkout live"}).status_code == 302
    db.session.refresh(live)
    assert live.revoked_at is not None


def test_a_test_key_needs_no_typing_and_a_live_roll_only_when_it_stops_now(client, auth, org, owner):
    test_key = factories.api_key(org, owner, name="Sandbox").api_key
    live = factories.api_key(org, owner, name="Payments", environment="live").api_key
    auth.login(owner)
    assert "Type the key" not in client.get(f"/orgs/{org.slug}/keys/{test_key.id}/revoke").get_data(as_text=True)
    roll = f"/orgs/{org.slug}/keys/{live.id}/roll"
    assert client.post(roll, data={"grace": "now"}).status_code == 422  # stops a live key at once: type its name
    db.session.refresh(live)
    assert live.replaced_by_id is None
    assert client.post(roll, data={"grace": "24h"}).status_code == 200  # with a grace period, no typing
    db.session.refresh(live)
    assert live.replaced_by_id is not None


def test_live_keys_are_marked_on_their_pages_and_test_keys_are_not(client, auth, org, owner):
    live = factories.api_key(org, owner, environment="live").api_key
    sandbox = factories.api_key(org, owner).api_key
    auth.login(owner)
    for path in ("", "/revoke", "/roll"):
        assert 'class="live-band"' in client.get(f"/orgs/{org.slug}/keys/{live.id}{path}").get_data(as_text=True)
        assert 'class="live-band"' not in client.get(f"/orgs/{org.slug}/keys/{sandbox.id}{path}").get_data(as_text=True)
    created = client.post(f"/orgs/{org.slug}/keys/new", data={"name": "Prod", "environment": "live"})
    assert created.status_code == 200 and "Live key." in created.get_data(as_text=True)
