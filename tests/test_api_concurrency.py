"""The production path under concurrency, on committed data: the limiter is exact and no usage row is lost.

These tests use the ``direct`` backend (one autocommit connection per process, grouped calls) and the
buffered usage writer, as gunicorn workers do, and one test runs a real gunicorn and stops it cleanly.
"""

from __future__ import annotations

import http.client
import multiprocessing
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import sqlalchemy as sa

from portal.api import install_verifier
from portal.extensions import db
from portal.keys import format as keyformat
from portal.models import ApiKeyUsage, Organization
from portal.plans import PLANS
from portal.verification import sql
from portal.verification.backend import DirectBackend, libpq_dsn
from portal.verification.usage_writer import BufferedRecorder
from portal.verification.verifier import Verifier
from tests import factories
from tests.servers import gunicorn

pytestmark = pytest.mark.concurrency


@pytest.fixture
def committed(app: Any) -> Iterator[dict[str, Any]]:
    """A free-plan organization with two keys, committed; deleted with its usage rows afterwards."""
    org = factories.org(plan="free")
    keys = [factories.api_key(org, None, name=f"k{i}").plaintext for i in range(2)]
    tag = f"/concurrency/{uuid.uuid4().hex}"
    data = {
        "client_ip": f"2001:db8::{uuid.uuid4().hex[:4]}:{uuid.uuid4().hex[:4]}",  # this test's calls' address
        "org_id": org.id,
        "keys": keys,
        "tag": tag,
        "url": app.config["SQLALCHEMY_DATABASE_URI"],
        "pepper": app.config["API_KEY_PEPPER"],
    }
    yield data
    db.session.rollback()
    db.session.execute(
        sa.delete(ApiKeyUsage).where(
            sa.or_(ApiKeyUsage.organization_id == org.id, ApiKeyUsage.endpoint.startswith(tag))
        )
    )
    db.session.execute(sa.text("DELETE FROM api_invalid_key_counts WHERE client_ip = :ip"), {"ip": data["client_ip"]})
    for pending in ("usage_rollup_pending", "usage_client_pending"):  # the queues other tests fold
        db.session.execute(sa.text(f"DELETE FROM {pending} WHERE organization_id = :o"), {"o": org.id})  # noqa: S608
    db.session.execute(sa.delete(Organization).where(Organization.id == org.id))
    db.session.commit()


def invalid_calls(client_ip: str) -> dict[str, int]:
    """Calls counted per outcome in ``api_invalid_key_counts`` for ``client_ip``."""
    db.session.rollback()
    rows = db.session.execute(
        sa.text("SELECT outcome, sum(calls) FROM api_invalid_key_counts WHERE client_ip = :ip GROUP BY 1"),
        {"ip": client_ip},
    )
    return {outcome: int(calls) for outcome, calls in rows}


def make_verifier(url: str, pepper: str, interval: float = 0.05) -> Verifier:
    dsn = libpq_dsn(url)
    return Verifier(DirectBackend(dsn), BufferedRecorder(dsn, interval=interval), pepper)


def per_minute(org_id: uuid.UUID) -> list[tuple[int, int]]:
    """(admitted, answered for a valid key) per one-minute window, from the usage rows."""
    rows = db.session.execute(
        sa.text(
            """
        SELECT count(*) FILTER (WHERE outcome = 'ok'), count(*)
        FROM api_key_usage WHERE organization_id = :org
        GROUP BY date_trunc('minute', occurred_at) ORDER BY 1
        """
        ),
        {"org": org_id},
    ).all()
    return [(int(a), int(b)) for a, b in rows]


def test_limiter_is_exact_with_many_threads(committed):
    limit = PLANS["free"].requests_per_minute
    verifier = make_verifier(committed["url"], committed["pepper"])
    calls = 12 * 25
    keys = committed["keys"]

    def one(i: int) -> str:
        return verifier.verify(keys[i % 2], committed["tag"]).outcome

    with ThreadPoolExecutor(max_workers=12) as pool:
        outcomes = list(pool.map(one, range(calls)))
    verifier.close()

    assert set(outcomes) == {"ok", "rate_limited"}
    windows = per_minute(committed["org_id"])
    assert sum(total for _, total in windows) == calls
    for admitted, total in windows:
        assert admitted == min(limit, total)
    assert outcomes.count("ok") == sum(admitted for admitted, _ in windows)


def _process_calls(url: str, pepper: str, key: str, tag: str, calls: int, queue: Any) -> None:
    verifier = make_verifier(url, pepper)
    admitted = sum(verifier.verify(key, tag).outcome == "ok" for _ in range(calls))
    verifier.close()
    queue.put(admitted)


def test_limit_is_shared_by_processes(committed):
    """Two processes (like two gunicorn workers or two servers) draw from the same per-minute budget."""
    limit = PLANS["free"].requests_per_minute
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [
        ctx.Process(
            target=_process_calls,
            args=(committed["url"], committed["pepper"], key, committed["tag"], limit, queue),
        )
        for key in committed["keys"]
    ]
    for p in procs:
        p.start()
    admitted = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    windows = per_minute(committed["org_id"])
    assert sum(total for _, total in windows) == 2 * limit
    for ok, total in windows:
        assert ok == min(limit, total)
    assert sum(admitted) == sum(ok for ok, _ in windows)
    if len(windows) == 1:
        assert sum(admitted) == limit


def test_no_usage_row_lost_with_buffering(committed):
    verifier = make_verifier(committed["url"], committed["pepper"], interval=0.01)
    candidates = [*committed["keys"], "pk_test_bad", keyformat.generate("live")]
    calls = 8 * 100
    odd = committed["tag"] + "/it's 100% ünï"

    def one(i: int) -> None:
        verifier.verify(candidates[i % len(candidates)], committed["tag"] if i % 2 else odd, ip=committed["client_ip"])

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(one, range(calls)))
    verifier.close()
    count = db.session.scalar(
        sa.select(sa.func.count()).select_from(ApiKeyUsage).where(ApiKeyUsage.endpoint.in_([committed["tag"], odd]))
    )
    assert count == calls // 2  # the valid keys' calls
    assert invalid_calls(committed["client_ip"]) == {"malformed": calls // 4, "unknown": calls // 4}


def _post(base: str, body: bytes) -> int:
    req = urllib.request.Request(  # noqa: S310 - the loopback test server
        f"{base}/v1/keys/verify",
        data=body,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310 - loopback (generous: CI may be busy)
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_gunicorn_clean_stop_writes_every_buffered_row(committed, tmp_path):
    """A real gunicorn with the shipped settings (2 gevent workers), 16 clients on one organization: rows are
    only flushed at exit here (a one-hour interval), so SIGTERM must still write them all, also with an idle
    keep-alive client still connected (a gateway's pool); the workers' grouped verifications admit exactly the
    limit per minute, the same calls the clients saw answered 200."""
    bodies = [
        f'{{"key": "{k}", "endpoint": "{committed["tag"]}", "client_ip": "{committed["client_ip"]}"}}'.encode()
        for k in [*committed["keys"], "pk_test_bad"]
    ]
    with gunicorn(
        committed["url"],
        tmp_path,
        API_KEY_PEPPER=committed["pepper"],
        API_USAGE_FLUSH_INTERVAL="3600",
        API_INVALID_KEY_BUDGET="0",  # every malformed key is answered 401 and counted
    ) as base:
        with ThreadPoolExecutor(max_workers=16) as pool:
            statuses = list(pool.map(lambda i: _post(base, bodies[i % 3]), range(240)))
        idle = http.client.HTTPConnection(base.removeprefix("http://"), timeout=60)  # kept alive during the stop
        idle.request("POST", "/v1/keys/verify", bodies[2], {"Content-Type": "application/json"})
        statuses.append(idle.getresponse().status)
        assert set(statuses) <= {200, 401, 429}
        in_db = db.session.scalar(
            sa.select(sa.func.count()).select_from(ApiKeyUsage).where(ApiKeyUsage.endpoint == committed["tag"])
        )
        assert in_db == 0  # still buffered in the workers
    db.session.rollback()
    count = db.session.scalar(
        sa.select(sa.func.count()).select_from(ApiKeyUsage).where(ApiKeyUsage.endpoint == committed["tag"])
    )
    idle.close()
    assert count + invalid_calls(committed["client_ip"])["malformed"] == len(statuses) == 241
    windows = per_minute(committed["org_id"])
    assert sum(total for _, total in windows) == statuses.count(200) + statuses.count(429) == 160
    for admitted, total in windows:
        assert admitted == min(PLANS["free"].requests_per_minute, total)
    assert statuses.count(200) == sum(admitted for admitted, _ in windows)


def test_a_refused_row_does_not_block_the_others(committed):
    from datetime import UTC, datetime

    recorder = BufferedRecorder(libpq_dsn(committed["url"]), interval=3600)
    now, key_id = datetime.now(UTC), str(uuid.uuid4())
    good = (key_id, None, now, committed["tag"], 401, 1.0, "revoked", None, None)
    bad = (key_id, None, now, committed["tag"], 401, 1.0, "not-an-outcome", None, None)  # violates the CHECK constraint
    for row in (good, bad, good):
        recorder.add(row)
    recorder.close()
    assert recorder.dropped == 1
    count = db.session.scalar(
        sa.select(sa.func.count()).select_from(ApiKeyUsage).where(ApiKeyUsage.endpoint == committed["tag"])
    )
    assert count == 2


def test_buffered_rows_keep_special_characters(committed):
    """The writer's array literals must not reinterpret quotes, backslashes, braces, commas or a literal NULL."""
    from datetime import UTC, datetime

    suffixes = ("\tx", "\ny\r", "\\", "\\N", "", '"', '\\"', "{a,b}", ",", "NULL", " NULL ", "ünï 💥")
    endpoints = [committed["tag"] + suffix for suffix in suffixes] + ["NULL", '"{}"']
    recorder = BufferedRecorder(libpq_dsn(committed["url"]), interval=3600)
    for endpoint in endpoints:
        recorder.add((str(uuid.uuid4()), None, datetime.now(UTC), endpoint, 401, None, "revoked", None, None))
    recorder.close()
    stored = db.session.scalars(
        sa.select(ApiKeyUsage.endpoint).where(
            sa.or_(ApiKeyUsage.endpoint.startswith(committed["tag"]), ApiKeyUsage.endpoint.in_(endpoints[-2:]))
        )
    ).all()
    db.session.execute(sa.delete(ApiKeyUsage).where(ApiKeyUsage.endpoint.in_(endpoints[-2:])))
    db.session.commit()
    assert sorted(stored) == sorted(endpoints)


def test_verification_survives_a_dropped_connection(committed):
    verifier = make_verifier(committed["url"], committed["pepper"])
    key = committed["keys"][0]
    assert verifier.verify(key, committed["tag"]).outcome == "ok"
    pid = verifier.backend._cursor().connection.get_backend_pid()  # type: ignore[attr-defined]
    db.session.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    db.session.commit()
    assert verifier.verify(key, committed["tag"]).outcome == "ok"
    cur = verifier.backend._cursor()  # type: ignore[attr-defined]
    cur.execute("DEALLOCATE ALL")  # what a connection pooler's reset does
    assert verifier.verify(key, committed["tag"]).outcome == "ok"
    verifier.close()


def test_database_down_is_503_and_not_metered(app, committed):
    verifier = make_verifier("postgresql://nobody@127.0.0.1:1/none", committed["pepper"])
    original = install_verifier(app, verifier)
    try:
        response = app.test_client().post("/v1/keys/verify", json={"key": committed["keys"][0]})
    finally:
        install_verifier(app, original)
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "unavailable"
    assert response.headers["Retry-After"] == "1"
    assert verifier.recorder.pending() == 0  # type: ignore[attr-defined]


def test_finished_api_windows_are_pruned_on_the_fly(committed):
    old = sa.text(
        "INSERT INTO rate_limit_tracking (bucket, window_start, organization_id, count) "
        "VALUES (:b, now() - interval '10 minutes', :org, 5)"
    )
    db.session.execute(old, {"b": sql.org_bucket(committed["org_id"], "test"), "org": committed["org_id"]})
    db.session.execute(old, {"b": f"login:{committed['tag']}", "org": None})
    db.session.commit()
    recorder = BufferedRecorder(libpq_dsn(committed["url"]))
    assert recorder.prune() >= 1
    recorder.close()
    buckets = set(
        db.session.scalars(
            sa.text("SELECT bucket FROM rate_limit_tracking WHERE bucket IN (:a, :b)"),
            {"a": sql.org_bucket(committed["org_id"], "test"), "b": f"login:{committed['tag']}"},
        )
    )
    assert buckets == {f"login:{committed['tag']}"}
    db.session.execute(sa.text("DELETE FROM rate_limit_tracking WHERE bucket = :b"), {"b": f"login:{committed['tag']}"})
    db.session.commit()


def _vacuums() -> int:
    """Manual (not autovacuum) VACUUMs of the tables the usage writer keeps small, so far."""
    db.session.commit()  # statistics are read once per transaction
    return int(
        db.session.scalar(
            sa.text("SELECT sum(vacuum_count) FROM pg_stat_user_tables WHERE relname = ANY(:tables)"),
            {"tables": list(sql.HOT_TABLES)},
        )
        or 0
    )


def test_usage_writer_vacuums_the_churned_tables_on_its_own(committed):
    """Between flushes the writer vacuums the tables every call churns: they stay small without autovacuum."""
    vacuums = _vacuums()
    dsn = libpq_dsn(committed["url"])
    recorder = BufferedRecorder(dsn, interval=0.02, maintain_every=0.1)
    verifier = Verifier(DirectBackend(dsn), recorder, committed["pepper"])
    verifier.verify(committed["keys"][1], committed["tag"])
    deadline = time.monotonic() + 20
    while _vacuums() < vacuums + 2 * len(sql.HOT_TABLES) and time.monotonic() < deadline:
        time.sleep(0.1)
    verifier.close()
    assert _vacuums() >= vacuums + 2 * len(sql.HOT_TABLES)  # twice each, so it is periodic


def test_a_failed_prune_does_not_stall_the_flushes(committed, monkeypatch):
    """A prune that fails (here: a broken statement) must not leave the writer's connection in an aborted
    transaction, which would make every later flush fail until the next error closed it."""
    from datetime import UTC, datetime

    recorder = BufferedRecorder(libpq_dsn(committed["url"]), interval=3600)
    monkeypatch.setattr(sql, "PRUNE_API_WINDOWS_SQL", "DELETE FROM no_such_table")
    with pytest.raises(Exception, match="no_such_table"):
        recorder.maintain(prune=True)
    recorder.add((str(uuid.uuid4()), None, datetime.now(UTC), committed["tag"], 401, 1.0, "revoked", None, None))
    assert recorder.flush() == 1
    assert recorder.maintain() in (True, False)  # vacuuming works again on the fresh connection
    recorder.close()


def test_a_role_that_cannot_vacuum_turns_the_vacuum_off_quietly(committed, caplog):
    """VACUUM by a role that does not own the tables only warns; the writer notices once and stops trying."""
    url = sa.make_url(committed["url"])
    role = f"portal_writer_{uuid.uuid4().hex[:8]}"
    db.session.execute(sa.text(f'CREATE ROLE "{role}" LOGIN'))
    db.session.commit()
    try:
        recorder = BufferedRecorder(libpq_dsn(url.set(username=role, password=None).render_as_string(False)))
        with caplog.at_level("WARNING", logger="portal.verification.usage"):
            assert recorder.maintain() is False
            assert recorder.maintain() is False
        recorder.close()
        assert [r.getMessage() for r in caplog.records].count(
            f"usage writer: not the owner of {sql.HOT_TABLES}, leaving them to autovacuum"
        ) == 1
    finally:
        db.session.rollback()
        db.session.execute(sa.text(f'DROP ROLE IF EXISTS "{role}"'))
        db.session.commit()
