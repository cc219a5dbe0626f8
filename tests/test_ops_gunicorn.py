"""Metrics, request logs and health checks of a real gunicorn with the shipped settings (2 gevent workers)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa

from portal.extensions import db
from portal.keys import services as key_services
from tests import factories
from tests.metrics_helpers import METRICS_TOKEN, parse, value
from tests.servers import ROOT, gunicorn

pytestmark = pytest.mark.concurrency

SECRET_WORDS = "correct horse battery staple 9"
RESET_TOKEN = "reset-token-that-must-stay-private"


@pytest.fixture
def committed(app: Any) -> Iterator[dict[str, Any]]:
    """A pro-plan organization with one key and its owner, committed; removed afterwards with everything its calls
    left (usage rows, pending rollup sums, the invalid-key counts of this test's client address), so no other
    test reads them."""
    org = factories.org(plan="pro")
    owner = factories.member(org, "owner")
    key = factories.api_key(org, owner).plaintext
    # Refused calls use a revoked key of this organization: they leave usage rows (removed with it), where a
    # malformed key would leave counts for the loopback address that tests in other workers read.
    revoked = factories.api_key(org, owner, name="Revoked")
    key_services.revoke_key(org, revoked.api_key, owner)
    client_ip = f"2001:db8::{uuid.uuid4().hex[:4]}:{uuid.uuid4().hex[:4]}"
    data = {
        "org": org,
        "owner": owner,
        "key": key,
        "revoked_key": revoked.plaintext,
        "tag": f"/ops/{uuid.uuid4().hex}",
        "client_ip": client_ip,
    }
    org_id, user_id = org.id, owner.id
    yield data
    db.session.rollback()
    for statement in (
        "DELETE FROM api_key_usage WHERE organization_id = :o",
        "DELETE FROM usage_rollup_pending WHERE organization_id = :o",
        "DELETE FROM usage_client_pending WHERE organization_id = :o",
        "DELETE FROM audit_events WHERE organization_id = :o",
        "DELETE FROM notification_events WHERE organization_id = :o",
        "DELETE FROM organizations WHERE id = :o",  # cascades to keys, members and rollups
        "DELETE FROM api_invalid_key_counts WHERE client_ip = :ip",
        "DELETE FROM users WHERE id = :u",
    ):
        db.session.execute(sa.text(statement), {"o": org_id, "ip": client_ip, "u": user_id})
    db.session.commit()


def _call(base: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(base + path, data=body, headers=headers or {})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - our own loopback server
            return response.status, response.headers
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers


def _scrape(base: str) -> dict[Any, float]:
    request = urllib.request.Request(base + "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})  # noqa: S310
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        return parse(response.read().decode())


def _worker(headers: Any) -> str:
    """The answering worker: a generated request id starts with its process's random prefix."""
    return str(headers["X-Request-ID"])[:20]


def test_metrics_add_up_across_workers_and_logs_are_json_without_secrets(app, committed, tmp_path):
    key, tag, client_ip = committed["key"], committed["tag"], committed["client_ip"]
    verify = json.dumps({"key": key, "endpoint": tag, "client_ip": client_ip}).encode()
    refused = json.dumps({"key": committed["revoked_key"], "endpoint": tag, "client_ip": client_ip}).encode()
    json_headers = {"Content-Type": "application/json"}
    with gunicorn(
        app.config["SQLALCHEMY_DATABASE_URI"],
        tmp_path,
        API_KEY_PEPPER=app.config["API_KEY_PEPPER"],
        METRICS_TOKEN=METRICS_TOKEN,
        LOG_FORMAT="json",
        API_INVALID_KEY_BUDGET="0",
    ) as base:
        before = _scrape(base)
        answers: list[tuple[int, Any]] = []
        with ThreadPoolExecutor(max_workers=16) as pool:
            # Until both workers have answered some (gunicorn does not promise an even spread), 40 calls at a time.
            while len({_worker(h) for _, h in answers}) < 2 and len(answers) < 400:  # under the 1,000 a minute
                bodies = [verify] * 30 + [refused] * 10
                answers += pool.map(lambda b: _call(base, "/v1/keys/verify", b, json_headers), bodies)
            pages = list(pool.map(lambda _: _call(base, "/login"), range(12)))
        assert len({_worker(h) for _, h in answers}) == 2
        valid, invalid = len(answers) * 3 // 4, len(answers) // 4
        assert sorted({status for status, _ in answers}) == [200, 401]
        assert {status for status, _ in pages} == {200}
        # Each worker folds its counts into the metrics at its next usage flush (every 0.2 s): wait for both.
        deadline = time.monotonic() + 30
        while True:
            after = _scrape(base)

            def delta(name: str, _after: Any = after, **labels: str) -> float:
                return value(_after, name, **labels) - value(before, name, **labels)

            # The counter and the histogram are separate files, written one after the other: wait for both.
            folded = min(delta("procode_verifications_total"), delta("procode_verification_duration_seconds_count"))
            if folded >= len(answers) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert delta("procode_verifications_total", outcome="ok") == valid
        assert delta("procode_verifications_total", outcome="revoked") == invalid
        assert delta("procode_verifications_total") == len(answers)
        assert delta("procode_verification_duration_seconds_count") == len(answers)
        assert delta("procode_page_duration_seconds_count", endpoint="auth.login", method="GET") == 12
        assert value(after, "procode_usage_rows_buffered") >= 0
        assert value(after, "procode_metrics_database_up") == 1
        assert value(after, "procode_usage_flush_failures_total") == 0

        # Pages and calls carrying secrets, for the log check below.
        signin = _call(base, "/login", f"email={committed['owner'].email}&password={SECRET_WORDS}".encode())
        assert signin[0] == 400  # no CSRF token: refused before the password is read, so no throttle is spent
        _call(base, f"/password/reset/{RESET_TOKEN}?token={RESET_TOKEN}")
        _call(base, "/v1/keys/verify/gateway", headers={"Authorization": f"Bearer {key}"})
        health = {path: _call(base, path)[0] for path in ("/healthz", "/readyz")}
        assert health == {"/healthz": 200, "/readyz": 200}
        for source, command in _health_checks():  # what the Dockerfile and docker-compose.yml run
            port = base.rsplit(":", 1)[1]
            env = {**os.environ, "GUNICORN_BIND": f"0.0.0.0:{port}"}
            assert subprocess.run(command, env=env, timeout=30).returncode == 0, source  # noqa: S603

    log = next(tmp_path.glob("gunicorn-*.log")).read_text()
    for secret in (
        key,
        committed["revoked_key"],
        SECRET_WORDS,
        SECRET_WORDS.replace(" ", "+"),
        RESET_TOKEN,
        METRICS_TOKEN,
    ):
        assert secret not in log
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    requests = [line for line in lines if line["logger"] == "portal.requests"]
    assert all(set(line) >= {"request_id", "method", "route", "status", "duration_ms"} for line in requests)
    logged = {line["request_id"]: line for line in requests}
    for status, headers in answers:
        line = logged[headers["X-Request-ID"]]
        assert (line["route"], line["status"]) == ("api.verify", status)
        assert line["organization_id"] == str(committed["org"].id)  # a revoked key still names its organization
    routes = [line["route"] for line in requests]
    assert routes.count("auth.login") == 13 and "auth.reset_password" in routes and "api.verify_gateway" in routes
    assert "ops.metrics" in routes and "ops.readyz" in routes


def _health_checks() -> list[tuple[str, list[str]]]:
    """The exec-form health check commands of the Dockerfile and docker-compose.yml, with this interpreter."""
    found = []
    for name, pattern in (
        ("Dockerfile", r"^\s*CMD (\[\"python\".*\])\s*$"),
        ("docker-compose.yml", r"^\s*test: (\[\"CMD\", \"python\".*\])\s*$"),
    ):
        text = (ROOT / name).read_text()
        (command,) = [json.loads(m) for m in re.findall(pattern, text, flags=re.MULTILINE)]
        command = command[1:] if command[0] == "CMD" else command
        found.append((name, [sys.executable, *command[1:]]))
    return found


def _gunicorn_config() -> Any:
    spec = importlib.util.spec_from_file_location("gunicorn_conf", ROOT / "gunicorn.conf.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_master_start_gets_an_empty_metrics_directory(tmp_path, monkeypatch):
    """An operator's PROMETHEUS_MULTIPROC_DIR is emptied of a previous run's values; without one, a fresh
    temporary directory is made (also by a re-exec'd master, which inherits the old one's) and removed at exit."""
    conf = _gunicorn_config()
    stale = tmp_path / "counter_123.db"
    stale.write_bytes(b"old")
    (tmp_path / "keep.txt").write_text("not ours")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.delenv("PROCODE_METRICS_DIR_MADE", raising=False)
    conf._fresh_metrics_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]

    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    conf._fresh_metrics_dir()
    made = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    assert made.is_dir() and made != tmp_path
    conf._fresh_metrics_dir()  # a re-exec'd master inherits the variable: it makes its own
    remade = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    assert remade != made and remade.is_dir()

    (remade / "gauge_livesum_4242.db").write_bytes(b"")
    (remade / "counter_4242.db").write_bytes(b"")
    conf.child_exit(None, SimpleNamespace(pid=4242))
    assert sorted(p.name for p in remade.iterdir()) == ["counter_4242.db"]  # counts of a dead worker still add up
    conf.on_exit(None)
    assert not made.exists() and not remade.exists()
