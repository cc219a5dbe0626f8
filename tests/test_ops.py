"""Health probes, metrics and request logs, in-process (a real gunicorn: tests/test_ops_gunicorn.py)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg2
import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from portal import create_app, logs, metrics
from portal.db import database_ahead, migration_revisions, migrations_head, schema_warning
from portal.extensions import db
from portal.keys import format as keyformat
from portal.logs import JsonFormatter, TextFormatter
from portal.models import NotificationEvent, OutboxMail, WebhookDelivery, WebhookEndpoint
from portal.ops import health
from portal.timeutil import utcnow
from portal.verification.usage_writer import BufferedRecorder
from tests.conftest import drop_database, make_database
from tests.metrics_helpers import METRICS_TOKEN, parse, value

UNREACHABLE = "postgresql://nobody@127.0.0.1:1/nothing"  # nothing listens on port 1: refused at once


@pytest.fixture
def metrics_on(app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(app.config, "METRICS_TOKEN", METRICS_TOKEN)


def scrape(client: Any) -> dict[Any, float]:
    response = client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert response.status_code == 200, response.data
    assert response.headers["Content-Type"].startswith("text/plain")
    return parse(response.get_data(as_text=True))


# --- Health ----------------------------------------------------------------------------------------------------


def test_healthz_says_the_process_answers(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}
    assert response.headers["Cache-Control"] == "no-store"


def test_readyz_is_ready_when_the_database_is_at_the_newest_migration(client, app):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ready", "migration": app.config["MIGRATIONS_HEAD"]}
    assert app.config["MIGRATIONS_HEAD"]  # read from migrations/versions


@pytest.fixture(scope="module")
def unmigrated_database(database_server: str) -> Iterator[str]:
    url = make_database(database_server, "unmigrated")
    yield url
    drop_database(database_server, url)


def test_readyz_is_503_with_the_reason_before_migrations(unmigrated_database):
    other = create_app({"SQLALCHEMY_DATABASE_URI": unmigrated_database}, env="testing")
    response = other.test_client().get("/readyz")
    assert response.status_code == 503
    error = response.get_json()["error"]
    assert error["code"] == "migrations_not_at_head"
    assert "flask db upgrade" in error["message"] and other.config["MIGRATIONS_HEAD"] in error["message"]


@pytest.fixture(scope="module")
def versioned_database(database_server: str) -> Iterator[str]:
    """A database with nothing but ``alembic_version``, which is all readiness reads; a test sets its revision."""
    url = make_database(database_server, "versioned")
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE alembic_version (version_num varchar(32) NOT NULL PRIMARY KEY)"))
    engine.dispose()
    yield url
    drop_database(database_server, url)


def _probe_at(url: str, revision: str, probes: int = 1) -> Any:
    """Set the database's revision, then ask a new app's ``/readyz`` ``probes`` times; the last answer."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM alembic_version"))
        conn.execute(sa.text("INSERT INTO alembic_version VALUES (:r)"), {"r": revision})
    engine.dispose()
    other = create_app({"SQLALCHEMY_DATABASE_URI": url}, env="testing")
    client = other.test_client()
    try:
        for _ in range(probes):
            response = client.get("/readyz")
        return response
    finally:
        with other.app_context():
            db.engine.dispose()


def test_readyz_is_503_when_the_database_is_at_an_older_migration(versioned_database):
    head = migrations_head()
    older = migration_revisions()[head]  # the one the newest migration follows
    response = _probe_at(versioned_database, older)
    assert response.status_code == 503
    assert response.headers["Cache-Control"] == "no-store"
    error = response.get_json()["error"]
    assert error == {
        "code": "migrations_not_at_head",
        "message": f"The database is at migration {older} but the code expects {head}: run `flask db upgrade`.",
    }


def test_readyz_stays_ready_when_a_newer_release_has_migrated_the_database(versioned_database, caplog, monkeypatch):
    """A rolling deploy migrates first: the instances still on this code keep serving (and say so), instead of
    all leaving the load balancer at once. The log says it once per process, not on every probe."""
    monkeypatch.setattr(health, "_ahead_logged", [False])
    head, newer = migrations_head(), "9999_from_a_newer_release"
    with caplog.at_level(logging.WARNING, logger="portal.ops"):
        response = _probe_at(versioned_database, newer, probes=3)
    assert response.status_code == 200
    assert response.get_json() == {
        "status": "ready",
        "migration": newer,
        "note": f"database ahead of this code (revision {newer}; code head {head})",
    }
    logged = [r.getMessage() for r in caplog.records if newer in r.getMessage()]
    assert logged == [
        f"readiness: the database is at migration {newer}, newer than this code's {head}: deploy the new code;"
        " still ready, so a rolling deploy keeps this instance until it is replaced"
    ]


def test_readyz_is_ready_without_a_note_at_head(versioned_database):
    head = migrations_head()
    response = _probe_at(versioned_database, head)
    assert response.status_code == 200
    assert response.get_json() == {"status": "ready", "migration": head}


def test_the_startup_warning_says_what_to_do_behind_and_ahead():
    head, known = migrations_head(), migration_revisions()
    assert head is not None
    assert schema_warning(head, head, known) is None
    assert schema_warning(None, head, known) == (
        f"the database is at migration none (empty database) but the code expects {head}: run `flask db upgrade`"
    )
    assert schema_warning("0001", head, known) == (
        f"the database is at migration 0001 but the code expects {head}: run `flask db upgrade`"
    )
    assert schema_warning("9999", head, known) == (
        f"the database is at migration 9999, newer than this code's {head}: deploy the new code"
    )
    assert not database_ahead("0001", head, known) and not database_ahead(None, head, known)
    assert database_ahead("9999", head, known) and not database_ahead(head, head, known)


def test_without_a_database_healthz_answers_and_readyz_does_not(caplog):
    other = create_app({"SQLALCHEMY_DATABASE_URI": UNREACHABLE}, env="testing")
    client = other.test_client()
    assert client.get("/healthz").status_code == 200
    with caplog.at_level(logging.WARNING, logger="portal.ops"):
        response = client.get("/readyz")
    assert response.status_code == 503
    assert response.get_json() == {
        "error": {"code": "database_unavailable", "message": "The database does not answer."}
    }
    assert "127.0.0.1" not in response.get_data(as_text=True)  # where the database is stays in the log
    assert any("did not answer" in r.getMessage() for r in caplog.records)


@pytest.mark.concurrency  # no test transaction: the session must be the unreachable app's own
def test_without_a_database_the_scrape_still_shows_the_process_metrics():
    other = create_app({"SQLALCHEMY_DATABASE_URI": UNREACHABLE, "METRICS_TOKEN": METRICS_TOKEN}, env="testing")
    samples = scrape(other.test_client())
    assert value(samples, "procode_metrics_database_up") == 0
    assert not [name for name, _ in samples if name.startswith(("procode_mail", "procode_webhook"))]
    assert [name for name, _ in samples if name.startswith("procode_verification_duration_seconds")]


# --- Metrics: access -------------------------------------------------------------------------------------------


def test_metrics_are_off_without_a_token(client):
    response = client.get("/metrics", headers={"Authorization": "Bearer anything"})
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "metrics_disabled"


@pytest.mark.usefixtures("metrics_on")
@pytest.mark.parametrize(
    ("authorization", "status", "code"),
    [
        (None, 401, "missing_token"),
        (f"Basic {METRICS_TOKEN}", 401, "missing_token"),
        ("Bearer ", 403, "invalid_token"),
        (f"Bearer {METRICS_TOKEN[:-1]}", 403, "invalid_token"),
        (f"Bearer {METRICS_TOKEN}x", 403, "invalid_token"),
    ],
)
def test_metrics_need_the_bearer_token(client, authorization, status, code):
    headers = {"Authorization": authorization} if authorization else {}
    response = client.get("/metrics", headers=headers)
    assert response.status_code == status
    assert response.get_json()["error"]["code"] == code
    assert METRICS_TOKEN not in response.get_data(as_text=True)
    if status == 401:
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="metrics"'


def test_a_short_metrics_token_is_refused_in_production():
    from portal.config import Config, ConfigError

    values = {"SECRET_KEY": "s" * 32, "API_KEY_PEPPER": "p" * 32, "METRICS_TOKEN": "short"}
    with pytest.raises(ConfigError, match="METRICS_TOKEN"):
        Config.validate({**{k: getattr(Config, k) for k in dir(Config) if k.isupper()}, **values})


# --- Metrics: what they count ----------------------------------------------------------------------------------


@pytest.mark.usefixtures("metrics_on")
def test_verifications_are_counted_by_outcome_with_their_latency(client, api_key):
    before = scrape(client)
    for _ in range(3):
        assert client.post("/v1/keys/verify", json={"key": api_key.plaintext}).status_code == 200
    assert client.post("/v1/keys/verify", json={"key": "pk_test_nope"}).status_code == 401
    assert client.post("/v1/keys/verify", json={"key": 5}).status_code == 400  # not a verification
    after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("procode_verifications_total", outcome="ok") == 3
    assert delta("procode_verifications_total", outcome="malformed") == 1
    assert delta("procode_verifications_total") == 4
    assert delta("procode_verification_duration_seconds_count") == 4
    assert delta("procode_verification_duration_seconds_bucket", le="+Inf") == 4
    assert delta("procode_verification_duration_seconds_sum") > 0


def test_a_folded_tally_exposes_what_observing_each_call_would():
    """The tally adds whole batches to the histogram; the exposition must equal one observe() per call."""
    seconds = [0.0001, 0.0005, 0.0005001, 0.001, 0.003, 0.05, 0.7, 4.9, 9.0]  # on, around and past the bounds
    registry = CollectorRegistry()
    reference = Histogram("reference_seconds", "", buckets=metrics.VERIFICATION_BUCKETS, registry=registry)
    for s in seconds:
        reference.observe(s)
    expected = {
        dict(labels)["le"]: v
        for (name, labels), v in parse(generate_latest(registry).decode()).items()
        if "_bucket" in name
    }
    before = parse(metrics.exposition().decode())
    tally = metrics.VerificationTally()
    for s in seconds:
        tally.record("ok", s)
    assert tally.fold() == len(seconds)
    after = parse(metrics.exposition().decode())
    got = {
        le: value(after, "procode_verification_duration_seconds_bucket", le=le)
        - value(before, "procode_verification_duration_seconds_bucket", le=le)
        for le in expected
    }
    assert got == expected
    total = value(after, "procode_verification_duration_seconds_sum") - value(
        before, "procode_verification_duration_seconds_sum"
    )
    assert total == pytest.approx(sum(seconds))
    assert tally.fold() == 0  # each call is folded once


@pytest.mark.usefixtures("metrics_on")
def test_pages_are_timed_by_endpoint_never_by_path(client, auth, org, owner):
    auth.login(owner)
    before = scrape(client)
    for _ in range(2):
        assert client.get(f"/orgs/{org.slug}/keys/").status_code == 200
    assert client.get("/password/reset/not-a-real-token?token=also-secret").status_code == 410
    assert client.get("/no-such-page").status_code == 404
    after = scrape(client)

    def delta(**labels: str) -> float:
        name = "procode_page_duration_seconds_count"
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta(endpoint="keys.index", method="GET") == 2
    assert delta(endpoint="auth.reset_password", method="GET") == 1
    assert delta(endpoint="unmatched", method="GET") == 1
    endpoints = {dict(labels).get("endpoint", "") for _, labels in after}
    assert not [e for e in endpoints if "/" in e or "token" in e]


@pytest.mark.usefixtures("metrics_on")
def test_mail_and_webhook_backlogs_are_read_at_scrape_time(client, org):
    before = scrape(client)
    long_ago = utcnow() - timedelta(minutes=10)
    db.session.add(
        OutboxMail(to_address="a@example.com", subject="s", body_text="b", template="t", created_at=long_ago)
    )
    event = NotificationEvent(organization_id=org.id, type="key.created", payload={})
    endpoint = WebhookEndpoint(
        organization_id=org.id, url="https://hooks.example.com/x", events=["*"], secret_sealed=b"x"
    )
    db.session.add_all([event, endpoint])
    db.session.flush()
    db.session.add(WebhookDelivery(endpoint_id=endpoint.id, event_id=event.id, next_attempt_at=long_ago))
    db.session.flush()
    after = scrape(client)
    assert value(after, "procode_metrics_database_up") == 1
    assert value(after, "procode_mail_outbox_pending") - value(before, "procode_mail_outbox_pending") == 1
    assert value(after, "procode_mail_outbox_oldest_pending_age_seconds") >= 500
    assert value(after, "procode_webhook_deliveries_pending") - value(before, "procode_webhook_deliveries_pending") == 1
    assert value(after, "procode_webhook_deliveries_oldest_due_age_seconds") >= 500


@pytest.mark.usefixtures("metrics_on")
def test_the_pool_gauge_follows_checked_out_connections(client):
    before = value(scrape(client), "procode_db_pool_connections_in_use")
    with db.engine.connect():
        during = value(scrape(client), "procode_db_pool_connections_in_use")
    after = value(scrape(client), "procode_db_pool_connections_in_use")
    assert during == before + 1
    assert after == before


@pytest.mark.usefixtures("metrics_on")
def test_failed_usage_flushes_are_counted_and_their_rows_stay_buffered(client):
    recorder = BufferedRecorder("host=127.0.0.1 port=1 dbname=nothing user=nobody", interval=3600, close_timeout=0.1)
    before = scrape(client)
    try:
        recorder.add((None, None, utcnow(), "/x", 401, 1.0, "revoked", None, None))
        with pytest.raises(Exception, match="127.0.0.1|port 1|refused"):
            recorder.flush()
        recorder.report()
        after = scrape(client)
    finally:
        recorder.close()
    assert value(after, "procode_usage_flush_failures_total") - value(before, "procode_usage_flush_failures_total") == 1
    assert value(after, "procode_usage_rows_buffered") == 1


# --- Request logs ----------------------------------------------------------------------------------------------


@pytest.fixture
def request_lines(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    logs.request_lines.clear()
    caplog.set_level(logging.INFO, logger="portal.requests")
    return caplog


def _lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The request lines logged so far, /v1 calls' buffered lines written first as the usage writer does."""
    logs.request_lines.write()
    return [r for r in caplog.records if r.name == "portal.requests"]


def test_a_page_gets_one_line_with_its_route_user_and_organization(client, auth, org, owner, request_lines):
    auth.login(owner)
    request_lines.clear()
    response = client.get(f"/orgs/{org.slug}/keys/", headers={"X-Request-ID": "trace-42"})
    (line,) = _lines(request_lines)
    assert response.headers["X-Request-ID"] == "trace-42"
    assert (line.request_id, line.method, line.route, line.status) == ("trace-42", "GET", "keys.index", 200)
    assert (line.user_id, line.organization_id) == (str(owner.id), str(org.id))
    assert line.duration_ms >= 0
    text = TextFormatter().format(line)
    assert "[trace-42]" in text and f"GET keys.index 200 {line.duration_ms:.2f}ms user={owner.id} org={org.id}" in text


def test_a_change_that_commits_still_logs_who_made_it(client, auth, owner, request_lines):
    auth.login(owner)
    request_lines.clear()
    assert client.post("/orgs/new", data={"name": "Side Project"}).status_code == 302
    (line,) = _lines(request_lines)
    assert (line.route, line.status, line.user_id) == ("orgs.create", 302, str(owner.id))


def test_a_verification_gets_one_line_with_its_organization_and_never_the_key(client, org, api_key, request_lines):
    response = client.post("/v1/keys/verify", json={"key": api_key.plaintext, "endpoint": "/x"})
    gateway = client.get("/v1/keys/verify/gateway", headers={"Authorization": f"Bearer {api_key.plaintext}"})
    lines = _lines(request_lines)
    assert [(r.method, r.route, r.status) for r in lines] == [
        ("POST", "api.verify", 200),
        ("GET", "api.verify_gateway", 200),
    ]
    assert [r.request_id for r in lines] == [response.headers["X-Request-ID"], gateway.headers["X-Request-ID"]]
    assert {r.organization_id for r in lines} == {str(org.id)}
    assert all(r.user_id is None for r in lines)
    _assert_nothing_secret(lines, api_key.plaintext)


def test_a_verification_through_the_flask_view_gets_the_same_line(app, client, org, api_key, request_lines):
    fast_path = app.extensions["portal.verify_fast_path"]
    fast_path.enabled = False
    try:
        client.post("/v1/keys/verify", json={"key": api_key.plaintext})
    finally:
        fast_path.enabled = True
    (line,) = _lines(request_lines)
    assert (line.route, line.status, line.organization_id) == ("api.verify", 200, str(org.id))


def test_secrets_sent_to_pages_never_reach_the_log(client, owner, request_lines):
    password, token = "correct horse battery staple 9", "reset-token-that-must-stay-private"
    client.post("/login", data={"email": owner.email, "password": password})
    client.get(f"/password/reset/{token}?next={token}")
    client.get("/v1/whoami", headers={"Authorization": f"Bearer pk_test_{token}"})
    lines = _lines(request_lines)
    assert [line.route for line in lines] == ["auth.login", "auth.reset_password", "api.whoami"]
    _assert_nothing_secret(lines, password, token, owner.email)


def test_a_forged_request_id_is_replaced_everywhere_it_would_be_logged(client, api_key, request_lines):
    """A caller's id with anything but letters, digits, '.', '_' and '-' could forge fields (or, where a header
    may carry it, lines) of the text log: pages, the /v1 fast path and errors all give the request a fresh id."""
    forged = "x] ERROR [admin portal.auth: signed in as staff"
    page = client.get("/login", headers={"X-Request-ID": forged})
    verify = client.post("/v1/keys/verify", json={"key": api_key.plaintext}, headers={"X-Request-ID": forged})
    missing = client.get("/no/such/page", headers={"X-Request-ID": "a b"})
    kept = client.get("/login", headers={"X-Request-ID": "Trace_7.a-b"})
    given = [page.headers["X-Request-ID"], verify.headers["X-Request-ID"], missing.headers["X-Request-ID"]]
    assert all(len(rid) == 32 and rid.isalnum() for rid in given)
    assert kept.headers["X-Request-ID"] == "Trace_7.a-b"
    lines = _lines(request_lines)
    assert sorted(r.request_id for r in lines) == sorted([*given, "Trace_7.a-b"])
    for record in lines:
        text = TextFormatter().format(record)
        assert forged not in text and "[a b]" not in text
        assert text.count("[") == text.count("]") == 1


def test_json_lines_are_json_with_every_field(client, api_key, request_lines):
    client.post("/v1/keys/verify", json={"key": api_key.plaintext})
    client.get("/healthz")
    for record in _lines(request_lines):
        line = json.loads(JsonFormatter().format(record))
        assert set(line) == {
            "time",
            "level",
            "logger",
            "request_id",
            "message",
            "method",
            "route",
            "status",
            "duration_ms",
            "user_id",
            "organization_id",
        }
        assert line["level"] == "INFO" and line["logger"] == "portal.requests" and line["time"].endswith("Z")
        assert api_key.plaintext not in json.dumps(line)


def test_an_error_logged_as_json_keeps_its_traceback():
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.getLogger("portal.errors").makeRecord(
            "portal.errors", logging.ERROR, __file__, 1, "unhandled error", (), exc_info=__import__("sys").exc_info()
        )
    line = json.loads(JsonFormatter().format(record))
    assert line["level"] == "ERROR" and "ValueError: boom" in line["exception"] and line["request_id"] == "-"


def test_api_lines_can_be_turned_off(app, client, api_key, request_lines, monkeypatch):
    monkeypatch.setitem(app.config, "LOG_API_REQUESTS", False)
    monkeypatch.setattr(app.extensions["portal.verify_fast_path"], "log_requests", False)
    client.post("/v1/keys/verify", json={"key": api_key.plaintext})
    client.get("/v1/openapi.json")
    client.get("/healthz")
    assert [line.route for line in _lines(request_lines)] == ["ops.healthz"]


def _assert_nothing_secret(lines: list[logging.LogRecord], *secrets: str) -> None:
    for record in lines:
        for formatted in (TextFormatter().format(record), JsonFormatter().format(record)):
            for secret in secrets:
                assert secret not in formatted


def _buffered_record(line: logs.BufferedLine) -> logging.LogRecord:
    created, rid, method, route, status, ms, org = line
    record = logs.RequestRecord(
        logs.REQUEST_MESSAGE,
        (method, route, status, ms, "-", org or "-"),
        request_id=rid,
        method=method,
        route=route,
        status=status,
        duration_ms=ms,
        user_id=None,
        organization_id=org,
    )
    record.created, record.msecs = created, (created - int(created)) * 1000.0
    return record


@pytest.mark.parametrize("formatter", [logs.TextFormatter(), logs.JsonFormatter()], ids=["text", "json"])
def test_a_buffered_verification_line_reads_as_its_record_would(formatter):
    for line in [
        (1_764_700_000.0417, "trace-1", "POST", "api.verify", 200, 0.31, "3f0c6a52-8d8e-4a5e-9c43-0f5f5c0b1a11"),
        (1_764_700_001.9999, "a" * 64, "HEAD", "api.verify_gateway", 401, 12.5, None),
        (1_764_700_002.5, 'caller\'s "id" \\ ü\u2028', "GET", "api.verify_gateway", 429, 1e-05, None),
    ]:
        assert formatter.request_line(line) == formatter.format(_buffered_record(line))


def test_buffered_verification_lines_are_written_together_in_order(monkeypatch, caplog, client, api_key):
    """With the portal's handler the only one, a flush writes every line buffered since the last one at once."""
    stream = io.StringIO()
    writes: list[str] = []
    monkeypatch.setattr(stream, "write", lambda text: writes.append(text) or len(text))
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs.RequestIdFilter())
    handler.setFormatter(logs.JsonFormatter())
    portal_log = logging.getLogger("portal")
    monkeypatch.setattr(portal_log, "handlers", [handler])
    monkeypatch.setattr(portal_log, "propagate", False)
    caplog.set_level(logging.INFO, logger="portal")
    logs.request_lines.clear()
    keys = (api_key.plaintext, keyformat.generate("test"))
    ids = [client.post("/v1/keys/verify", json={"key": key}).headers["X-Request-ID"] for key in keys]
    assert len(logs.request_lines) == 2 and writes == []
    assert logs.request_lines.write() == 2
    (text,) = writes
    lines = [json.loads(part) for part in text.splitlines()]
    assert [(line["request_id"], line["route"], line["status"]) for line in lines] == [
        (ids[0], "api.verify", 200),
        (ids[1], "api.verify", 401),
    ]
    assert api_key.plaintext not in text and len(logs.request_lines) == 0


def test_the_usage_writer_flush_writes_the_buffered_lines_even_when_the_database_is_down(request_lines):
    recorder = BufferedRecorder("host=127.0.0.1 port=1 dbname=nothing user=nobody", interval=3600, close_timeout=0.1)
    recorder.companions.append(logs.request_lines.write)
    try:
        recorder.add((None, None, utcnow(), "/x", 429, 1.0, "rate_limited", None, None))
        logs.request_lines.add("trace-7", "POST", "api.verify", 429, 0.0004, None)
        with pytest.raises(psycopg2.OperationalError):
            recorder.flush()
        pending = recorder.pending()
    finally:
        recorder.close()
    assert [(line.request_id, line.status) for line in _lines(request_lines)] == [("trace-7", 429)]
    assert pending == 1  # the row waits for the database; the line did not
