"""Past one app node (docs/scaling.md): two gunicorn instances on one database share limits and sessions and meter
exactly, and the usage pages read a real streaming replica when ``DATABASE_REPLICA_URL`` names one."""

from __future__ import annotations

import http.cookiejar
import http.server
import json
import re
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_migrate import upgrade

from portal import create_app
from portal import db as db_module
from portal.db import ensure_database
from portal.extensions import db
from portal.keys.policy import KeyPolicy
from portal.models import ApiKey, Organization, User
from portal.plans import PLANS
from portal.timeutil import utcnow
from portal.usage import maintenance
from tests import factories, replica
from tests.servers import gateway_binary, gunicorn, proxy
from tests.test_api_concurrency import committed  # noqa: F401 - the committed organization fixture
from tests.usage_helpers import csv_rows, event, record

pytestmark = pytest.mark.concurrency
FREE = PLANS["free"].requests_per_minute


def _verify(base: str, body: dict[str, Any]) -> int:
    request = urllib.request.Request(  # noqa: S310 - a loopback test server
        f"{base}/v1/keys/verify", json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:  # noqa: S310
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_two_app_nodes_share_limits_and_meter_exactly(committed, tmp_path):  # noqa: F811
    """Two gunicorn instances on different ports, one database, 16 clients spread over both: the organization's
    limit and a key's own limit admit exactly min(limit, calls) per minute between them, every answered call is
    one usage row (after both stop cleanly) and the rollups count them all."""
    org = db.session.get(Organization, committed["org_id"])
    limited = factories.api_key(org, None, name="limited", key_policy=KeyPolicy(rate_limit=7)).plaintext
    keys, tag = [*committed["keys"], limited], committed["tag"]
    body = {"endpoint": tag, "client_ip": committed["client_ip"]}
    settings = {"API_KEY_PEPPER": committed["pepper"]}
    with (
        gunicorn(committed["url"], tmp_path, **settings) as node_a,
        gunicorn(committed["url"], tmp_path, **settings) as node_b,
    ):
        nodes = [node_a, node_b]
        with ThreadPoolExecutor(max_workers=16) as pool:
            statuses = list(
                pool.map(lambda i: (i % 3, _verify(nodes[i % 2], {**body, "key": keys[i % 3]})), range(240))
            )
    assert {status for _, status in statuses} == {200, 429}
    db.session.rollback()
    rows = db.session.execute(
        sa.text(
            "SELECT date_trunc('minute', u.occurred_at) AS m, k.name = 'limited' AS limited,"
            " count(*) FILTER (WHERE u.outcome = 'ok') AS ok, count(*) AS calls"
            " FROM api_key_usage u JOIN api_keys k ON k.id = u.key_id WHERE u.endpoint = :tag GROUP BY 1, 2"
        ),
        {"tag": tag},
    ).all()
    assert sum(r.calls for r in rows) == len(statuses)  # metered exactly: one row per answered call
    assert sum(r.ok for r in rows) == sum(status == 200 for _, status in statuses)
    minutes = {r.m for r in rows}
    for minute in minutes:
        of_minute = [r for r in rows if r.m == minute]
        limited_ok = sum(r.ok for r in of_minute if r.limited)
        limited_calls = sum(r.calls for r in of_minute if r.limited)
        assert limited_ok == min(7, limited_calls)
        # The organization's limit: every usable call asked for it, and a call the key's own limit refused
        # spent nothing of it.
        asking = sum(r.calls for r in of_minute if not r.limited) + limited_ok
        assert sum(r.ok for r in of_minute) == min(FREE, asking)
    if len(minutes) == 1:
        assert sum(status == 200 for key, status in statuses if key == 2) == 7
        assert sum(status == 200 for _, status in statuses) == FREE
    maintenance.fold()
    rolled_up = db.session.scalar(
        sa.text("SELECT sum(calls) FROM usage_org_hourly WHERE organization_id = :org"), {"org": committed["org_id"]}
    )
    assert rolled_up == len(statuses)
    db.session.execute(sa.text("DELETE FROM usage_org_hourly WHERE organization_id = :o"), {"o": committed["org_id"]})
    db.session.commit()


class _Browser:
    """A browser with one cookie jar in front of both nodes (as behind a load balancer: cookies are per host)."""

    def __init__(self) -> None:
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

    def get(self, url: str) -> tuple[int, str, str]:
        with self.opener.open(url, timeout=60) as answer:  # follows redirects
            return int(answer.status), answer.geturl(), answer.read().decode()

    def post_form(self, url: str, page: str, fields: dict[str, str]) -> str:
        token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page)
        assert token is not None
        data = urllib.parse.urlencode({**fields, "csrf_token": token.group(1)}).encode()
        request = urllib.request.Request(url, data, method="POST")  # noqa: S310 - a loopback test server
        with self.opener.open(request, timeout=60) as answer:
            return str(answer.geturl())


def test_a_session_opened_on_one_node_works_and_ends_on_the_other(app, tmp_path):
    """Sessions are rows in PostgreSQL, not process memory: signed in through node A, the browser's next page
    on node B is signed in, and signing out on node B ends the session on node A too."""
    user = factories.user()
    email, user_id = user.email, user.id
    try:
        settings = {"COOKIE_SECURE": "false"}
        url = app.config["SQLALCHEMY_DATABASE_URI"]
        with gunicorn(url, tmp_path, **settings) as node_a, gunicorn(url, tmp_path, **settings) as node_b:
            browser = _Browser()
            _, _, login_page = browser.get(f"{node_a}/login")
            landed = browser.post_form(f"{node_a}/login", login_page, {"email": email, "password": factories.PASSWORD})
            assert "/login" not in landed
            status, where, page = browser.get(f"{node_b}/account/sessions")
            assert status == 200 and where.endswith("/account/sessions") and email in page
            browser.post_form(f"{node_b}/logout", page, {})
            _, where, _ = browser.get(f"{node_a}/account/sessions")
            assert "/login" in where
    finally:
        db.session.rollback()
        db.session.execute(sa.delete(User).where(User.id == user_id))
        db.session.commit()


@contextmanager
def _named_upstream(name: str) -> Iterator[str]:
    """A stand-in gunicorn that answers every GET with its name and the path it received."""

    class Named(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            body = json.dumps({"upstream": name, "path": self.path}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's signature
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Named)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_the_shipped_proxy_sends_v1_to_its_own_gunicorn(tmp_path):
    """docs/deploy/nginx.conf, as docker-compose.yml runs it: /v1 goes to the `api` service's gunicorn, every
    other path to `web`'s, but /metrics to neither."""
    if gateway_binary("nginx") is None:
        pytest.skip("nginx is not installed (make test installs Debian's nginx-light when run as root)")
    paths = ("/v1/keys/verify", "/v1/openapi.json", "/orgs/acme/usage", "/login", "/docs/api")
    with _named_upstream("web") as web, _named_upstream("api") as api, proxy(web, tmp_path, api=api) as base:
        answers = []
        for path in paths:
            with urllib.request.urlopen(f"{base}{path}", timeout=30) as answer:  # noqa: S310 - loopback
                answers.append(json.loads(answer.read()))
        with pytest.raises(urllib.error.HTTPError) as refused:  # scraped from each gunicorn, never through here
            urllib.request.urlopen(f"{base}/metrics", timeout=30)  # noqa: S310 - loopback
        refused.value.close()
        assert refused.value.code == 404
    assert [(a["path"], a["upstream"]) for a in answers] == [
        ("/v1/keys/verify", "api"),
        ("/v1/openapi.json", "api"),
        ("/orgs/acme/usage", "web"),
        ("/login", "web"),
        ("/docs/api", "web"),
    ]


# --- Dashboards from a streaming replica -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def pair() -> Iterator[replica.StreamingPair]:
    reason = replica.missing()
    if reason is not None:
        pytest.skip(f"the streaming replica test needs PostgreSQL's server binaries: {reason}")
    with replica.streaming_pair() as started:
        yield started


@pytest.fixture
def replica_app(pair: replica.StreamingPair) -> Iterator[Flask]:
    """The portal on the pair's primary, with ``DATABASE_REPLICA_URL`` naming the replica, migrated."""
    ensure_database(pair.primary, "procode")
    primary, standby = (
        sa.make_url(url).set(database="procode").render_as_string(hide_password=False)
        for url in (pair.primary, pair.replica)
    )
    app = create_app({"SQLALCHEMY_DATABASE_URI": primary, "DATABASE_REPLICA_URL": standby}, env="testing")
    with app.app_context():
        upgrade()
    yield app
    with app.app_context():
        for engine in db.engines.values():
            engine.dispose()


def _calls(client: Any, path: str) -> int:
    """The Calls column of a usage page's CSV export, summed."""
    answer = client.get(path)
    assert answer.status_code == 200
    rows = csv_rows(answer.data)
    return sum(int(row[1]) for row in rows[1:])


def test_usage_pages_read_the_streaming_replica(pair, replica_app):
    """With the replica's replay paused, new calls (folded into the rollups on the primary by the page itself)
    stay out of the dashboard and the key page; once it replays, they show. Nothing is written to the replica:
    a hot standby refuses writes, and the pages answer 200."""
    client = replica_app.test_client()
    with replica_app.app_context():
        org = factories.org(plan="pro")
        owner = factories.member(org, "owner")
        key = factories.api_key(org, owner).api_key
        record([event(key, utcnow() - timedelta(minutes=m)) for m in range(1, 4)])
        db.session.commit()
        maintenance.fold()
        org_id, key_id, dashboard = org.id, key.id, f"/orgs/{org.slug}/usage.csv"
        key_page = f"/orgs/{org.slug}/keys/{key.id}/usage.csv"
        client.post("/login", data={"email": owner.email, "password": factories.PASSWORD})
    pair.wait_for_replay()
    assert _calls(client, dashboard) == _calls(client, key_page) == 3

    pair.pause_replay()
    try:
        with replica_app.app_context():
            key = db.session.get(ApiKey, key_id)
            record([event(key, utcnow() - timedelta(seconds=s)) for s in (10, 20)])
            db.session.commit()
        assert _calls(client, dashboard) == _calls(client, key_page) == 3  # the replica, as it was
        with replica_app.app_context():  # the page folded the new calls, on the primary
            on_primary = db.session.scalar(
                sa.text("SELECT sum(calls) FROM usage_org_hourly WHERE organization_id = :o"), {"o": org_id}
            )
        assert on_primary == 5
    finally:
        pair.resume_replay()
    pair.wait_for_replay()
    assert _calls(client, dashboard) == _calls(client, key_page) == 5


def test_the_revoke_confirmation_counts_calls_the_replica_has_not_replayed(pair, replica_app):
    """What a revoke or roll would break is read from the primary: with the replica's replay paused, calls made
    since show on the revoke and roll confirmations (count, client, last call), while the key's usage page, read
    from the replica, still has none. A stalled replica never makes a key in use look safe to revoke."""
    client = replica_app.test_client()
    with replica_app.app_context():
        org = factories.org(plan="pro")
        owner = factories.member(org, "owner")
        key = factories.api_key(org, owner).api_key
        db.session.commit()
        key_id, base = key.id, f"/orgs/{org.slug}/keys/{key.id}"
        client.post("/login", data={"email": owner.email, "password": factories.PASSWORD})
    pair.wait_for_replay()  # the replica has the key, and no calls

    pair.pause_replay()
    try:
        with replica_app.app_context():
            key = db.session.get(ApiKey, key_id)
            now = utcnow()
            record([event(key, now - timedelta(minutes=m), client_ip="203.0.113.77") for m in (1, 2, 3)])
            db.session.commit()
        for page in (f"{base}/revoke", f"{base}/roll"):
            answer = client.get(page)
            assert answer.status_code == 200
            html = answer.get_data(as_text=True)
            assert "3 calls</strong> in the last 24 hours (3 succeeded) from <strong>1 client" in html, page
            assert "203.0.113.77" in html and "none ever" not in html
        assert _calls(client, f"{base}/usage.csv") == 0  # the replica, as it was: it has replayed none of them
    finally:
        pair.resume_replay()
    pair.wait_for_replay()
    assert _calls(client, f"{base}/usage.csv") == 3


def test_the_usage_pages_read_the_primary_while_the_replica_is_away(database_url, caplog):
    """A replica that refuses connections costs the pages nothing but a log line: the dashboard, its key page and
    the key list answer 200 with the primary's numbers, and the replica is tried again only later."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        nowhere = f"postgresql://postgres@127.0.0.1:{unused.getsockname()[1]}/procode"
        app = create_app({"SQLALCHEMY_DATABASE_URI": database_url, "DATABASE_REPLICA_URL": nowhere}, env="testing")
        client = app.test_client()
        with app.app_context():
            org = factories.org(plan="free")  # a monthly quota: the key list reads this month's calls too
            owner = factories.member(org, "owner")
            key = factories.api_key(org, owner).api_key
            record([event(key, utcnow() - timedelta(minutes=m)) for m in range(1, 5)])
            db.session.commit()
            org_id, slug, key_id, email = org.id, org.slug, key.id, owner.email
        try:
            client.post("/login", data={"email": email, "password": factories.PASSWORD})
            assert _calls(client, f"/orgs/{slug}/usage.csv") == 4
            assert _calls(client, f"/orgs/{slug}/keys/{key_id}/usage.csv") == 4
            assert client.get(f"/orgs/{slug}/keys/").status_code == 200
            assert client.get(f"/orgs/{slug}/keys/{key_id}").status_code == 200
        finally:
            with app.app_context():
                db.session.execute(sa.delete(Organization).where(Organization.id == org_id))
                db.session.execute(sa.delete(User).where(User.email == email))
                for table in ("api_key_usage", "usage_rollup_pending", "usage_client_pending"):  # what others fold
                    db.session.execute(sa.text(f"DELETE FROM {table} WHERE organization_id = :o"), {"o": org_id})  # noqa: S608
                db.session.commit()
                for engine in db.engines.values():
                    engine.dispose()
            db_module._replica_retry_at[0] = 0.0
    warnings = [r.getMessage() for r in caplog.records if "read replica did not answer" in r.getMessage()]
    assert len(warnings) == 1  # tried once, then the primary for the next REPLICA_RETRY_SECONDS
