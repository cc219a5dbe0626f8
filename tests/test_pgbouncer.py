"""Behind a real PgBouncer, in session and in transaction pooling (docs/operations.md, "Behind PgBouncer").

Each mode gets its own PgBouncer in front of the test database server: session pooling with a pool large enough
for every client, transaction pooling with two server connections for many clients, so consecutive statements
of one client land on different server connections. Through each, with ``DATABASE_POOL_MODE`` set to match:
keys verify, limits stay exact under concurrency, usage rows are written, the usage writer's maintenance runs,
portal pages render, and a real gunicorn serves. Migrations run through session pooling. A control shows why
the setting exists: the default mode's prepared statements and session settings under transaction pooling.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg2
import pytest
import sqlalchemy as sa
from flask import Flask
from flask_migrate import upgrade

from portal import create_app
from portal.api import get_verifier
from portal.db import check_connection, migrations_head
from portal.extensions import db
from portal.keys import format as keyformat
from portal.keys import services as key_services
from portal.keys.policy import KeyPolicy
from portal.models import ApiKeyUsage, Organization, User
from portal.plans import PLANS
from portal.timeutil import utcnow
from portal.usage import partitions
from portal.verification import pooling, sql
from portal.verification.backend import STATUS, DirectBackend, libpq_dsn
from portal.verification.usage_writer import BufferedRecorder
from portal.verification.verifier import Verifier
from tests import factories
from tests.api_helpers import away_from_a_window_boundary
from tests.conftest import IsolatedClient, drop_database, make_database
from tests.pooler import pgbouncer, pgbouncer_binary, through
from tests.servers import gunicorn

pytestmark = pytest.mark.concurrency  # committed data, reached through the pooler's own connections

MODES = ("session", "transaction")


@pytest.fixture(scope="module")
def poolers(database_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    """A PgBouncer per pool mode in front of the test server: {mode: port}."""
    if pgbouncer_binary() is None:
        pytest.skip("pgbouncer is not installed (make test installs Debian's pgbouncer when run as root)")
    work = tmp_path_factory.mktemp("pgbouncer")
    with (
        pgbouncer(database_server, "session", work, pool_size=20) as session,
        pgbouncer(database_server, "transaction", work, pool_size=2) as transaction,
    ):
        yield {"session": session, "transaction": transaction}


@pytest.fixture
def committed(app: Flask) -> Iterator[dict[str, Any]]:
    """A free-plan organization with its owner and keys (plain, scoped, with its own limit, revoked), committed;
    deleted with its usage rows afterwards."""
    org = factories.org(plan="free")
    owner = factories.member(org, "owner")
    keys = {name: factories.api_key(org, owner, name=f"{name} key") for name in ("plain", "other")}
    keys["scoped"] = factories.api_key(org, owner, name="scoped key", key_policy=KeyPolicy(scopes=["translate:read"]))
    keys["limited"] = factories.api_key(org, owner, name="limited key", key_policy=KeyPolicy(rate_limit=2))
    keys["revoked"] = factories.api_key(org, owner, name="revoked key")
    key_services.revoke_key(org, keys["revoked"].api_key, owner)
    data = {
        "org_id": org.id,
        "slug": org.slug,
        "owner": owner.email,
        "keys": {name: issued.plaintext for name, issued in keys.items()},
        "url": app.config["SQLALCHEMY_DATABASE_URI"],
        "pepper": app.config["API_KEY_PEPPER"],
    }
    owner_id = owner.id
    db.session.commit()  # reading them began a transaction
    yield data
    db.session.rollback()
    db.session.execute(sa.delete(ApiKeyUsage).where(ApiKeyUsage.organization_id == org.id))
    # The malformed and unknown keys sent from loopback, counted per address (other tests count theirs).
    db.session.execute(sa.text("DELETE FROM api_invalid_key_counts WHERE client_ip = '127.0.0.1'"))
    for pending in ("usage_rollup_pending", "usage_client_pending"):  # the queues other tests fold
        db.session.execute(sa.text(f"DELETE FROM {pending} WHERE organization_id = :o"), {"o": org.id})  # noqa: S608
    db.session.execute(sa.delete(Organization).where(Organization.id == org.id))
    db.session.execute(sa.delete(User).where(User.id == owner_id))
    db.session.commit()


@contextmanager
def portal_on(url: str, pool_mode: str) -> Iterator[Flask]:
    """An app instance on ``url`` with ``DATABASE_POOL_MODE=pool_mode``; its verifier and pool closed after."""
    app = create_app({"SQLALCHEMY_DATABASE_URI": url, "DATABASE_POOL_MODE": pool_mode}, env="testing")
    app.test_client_class = IsolatedClient
    try:
        with app.app_context():
            yield app
    finally:
        get_verifier(app).close()
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


def answer(client: Any, key: str, **extra: Any) -> tuple[int, str]:
    """``(status, outcome)`` of ``POST /v1/keys/verify``: ``ok`` or the error code."""
    response = client.post("/v1/keys/verify", json={"key": key, "endpoint": "/pgbouncer", **extra})
    body = response.get_json()
    return response.status_code, "ok" if body.get("valid") else body["code"]


def usage_outcomes(org_id: uuid.UUID) -> list[str]:
    """The outcomes of the organization's usage rows, sorted (read in a transaction of its own, then ended: a
    transaction left open would hold one of the pooler's two server connections)."""
    try:
        return sorted(db.session.scalars(sa.select(ApiKeyUsage.outcome).where(ApiKeyUsage.organization_id == org_id)))
    finally:
        db.session.rollback()


def vacuum_lock_released() -> bool:
    """Whether no session holds the usage writer's vacuum lock (within 5 s: another writer of this test process
    may hold it for a moment)."""
    query = sa.text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = :id")
    deadline = time.monotonic() + 5
    while True:
        try:
            if not db.session.scalar(query, {"id": sql.VACUUM_LOCK}):
                return True
        finally:
            db.session.rollback()
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def maintained(recorder: BufferedRecorder) -> bool:
    """Whether the writer's maintenance vacuumed (within 5 s: another writer may be vacuuming just then)."""
    recorder.maintain_every = 0.0  # due now, whoever vacuumed last
    deadline = time.monotonic() + 5
    while not recorder.maintain(prune=True):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.mark.parametrize("mode", MODES)
def test_keys_verify_meter_and_pages_render_through_pgbouncer(mode, poolers, committed):
    keys = committed["keys"]
    away_from_a_window_boundary()  # the limited key's three calls in one minute
    with portal_on(through(committed["url"], poolers[mode]), mode) as app:
        client = app.test_client()
        assert answer(client, keys["plain"]) == (200, "ok")
        assert answer(client, keys["scoped"], scope="translate:read") == (200, "ok")
        assert answer(client, keys["scoped"], scope="embed:write") == (403, "insufficient_scope")
        assert answer(client, keys["revoked"]) == (401, "revoked")
        # A key with its own limit takes the second statement (its own counter row, locked and incremented).
        assert [answer(client, keys["limited"]) for _ in range(3)] == [(200, "ok"), (200, "ok"), (429, "rate_limited")]
        assert answer(client, "pk_test_" + "x" * 38) == (401, "malformed")

        recorder = get_verifier(app).recorder
        recorder.flush()
        assert usage_outcomes(committed["org_id"]) == sorted(
            ["ok", "ok", "forbidden", "revoked", "ok", "ok", "rate_limited"]
        )
        # The writer's maintenance (prune finished windows, vacuum the churned tables) works and leaves no lock.
        assert maintained(recorder)
        assert vacuum_lock_released()

        assert (
            client.post("/login", data={"email": committed["owner"], "password": factories.PASSWORD}).status_code == 302
        )
        keys_page = client.get(f"/orgs/{committed['slug']}/keys/")
        assert keys_page.status_code == 200
        assert "scoped key" in keys_page.get_data(as_text=True)
        usage_page = client.get(f"/orgs/{committed['slug']}/usage")
        assert usage_page.status_code == 200
        assert client.get("/readyz").status_code == 200


def per_minute(org_id: uuid.UUID) -> list[tuple[int, int]]:
    """(admitted, asking) per one-minute window, from the usage rows: calls admitted, and calls of a usable key."""
    db.session.rollback()
    rows = db.session.execute(
        sa.text(
            "SELECT count(*) FILTER (WHERE outcome = 'ok'), count(*) FILTER (WHERE outcome IN ('ok', 'rate_limited')) "
            "FROM api_key_usage WHERE organization_id = :org GROUP BY date_trunc('minute', occurred_at)"
        ),
        {"org": org_id},
    ).all()
    db.session.rollback()
    return [(int(a), int(b)) for a, b in rows]


@pytest.mark.parametrize("mode", MODES)
def test_limits_stay_exact_with_many_clients_through_pgbouncer(mode, poolers, committed):
    """Three workers' engines (a verification connection and a usage writer each), four threads each, on one
    organization: through two server connections in transaction pooling, every call is answered and the minute
    admits exactly its limit."""
    limit = PLANS["free"].requests_per_minute
    dsn = libpq_dsn(through(committed["url"], poolers[mode]))
    workers = [
        Verifier(
            DirectBackend(dsn, pool_mode=mode),
            BufferedRecorder(dsn, interval=0.05, pool_mode=mode),
            committed["pepper"],
        )
        for _ in range(3)
    ]
    keys = [committed["keys"]["plain"], committed["keys"]["other"]]
    calls = 150
    away_from_a_window_boundary(10.0)

    def one(i: int) -> str:
        return workers[i % 3].verify(keys[i % 2], "/pgbouncer").outcome

    with ThreadPoolExecutor(max_workers=12) as pool:
        outcomes = list(pool.map(one, range(calls)))
    for worker in workers:
        worker.close()

    assert set(outcomes) == {"ok", "rate_limited"}
    windows = per_minute(committed["org_id"])
    assert sum(total for _, total in windows) == calls
    for admitted, total in windows:
        assert admitted == min(limit, total)
    assert outcomes.count("ok") == sum(admitted for admitted, _ in windows)


def _post(base: str, body: bytes) -> int:
    request = urllib.request.Request(  # noqa: S310 - the loopback test server
        f"{base}/v1/keys/verify", data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - loopback
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@pytest.mark.parametrize("mode", MODES)
def test_gunicorn_serves_through_pgbouncer(mode, poolers, committed, tmp_path):
    """The shipped gunicorn (gevent workers) with ``DATABASE_URL`` on the pooler: verifications, readiness, and
    every answered call metered once the workers stop."""
    keys = committed["keys"]
    bodies = [f'{{"key": "{keys[name]}", "endpoint": "/pgbouncer"}}'.encode() for name in ("plain", "other", "revoked")]
    with gunicorn(
        through(committed["url"], poolers[mode]),
        tmp_path,
        API_KEY_PEPPER=committed["pepper"],
        DATABASE_POOL_MODE=mode,
    ) as base:
        away_from_a_window_boundary(10.0)
        with ThreadPoolExecutor(max_workers=8) as pool:
            statuses = list(pool.map(lambda i: _post(base, bodies[i % 3]), range(120)))
        with urllib.request.urlopen(f"{base}/readyz", timeout=30) as ready:  # noqa: S310 - loopback
            assert ready.status == 200
    assert set(statuses) <= {200, 401, 429}
    assert statuses.count(401) == 40  # the revoked key
    assert len(usage_outcomes(committed["org_id"])) == 120
    windows = per_minute(committed["org_id"])
    assert sum(total for _, total in windows) == 80
    for admitted, total in windows:
        assert admitted == min(PLANS["free"].requests_per_minute, total)
    assert statuses.count(200) == sum(admitted for admitted, _ in windows)
    if len(windows) == 1:
        assert statuses.count(429) == 80 - PLANS["free"].requests_per_minute


def test_migrations_run_through_session_pooling(poolers, database_server):
    """``flask db upgrade`` through PgBouncer in session mode (in transaction mode, run it against PostgreSQL)."""
    url = make_database(database_server, "pgbouncer_migrations")
    try:
        pooled = through(url, poolers["session"])
        app = create_app({"SQLALCHEMY_DATABASE_URI": pooled}, env="testing")
        with app.app_context():
            upgrade()
            db.engine.dispose()
        get_verifier(app).close()
        assert check_connection(pooled) == migrations_head()
    finally:
        drop_database(database_server, url)


@pytest.mark.parametrize("mode", MODES)
def test_retention_as_the_owner_through_pgbouncer(mode, poolers, app, monkeypatch):
    """Through session pooling the table's owner detaches concurrently, its lock timeout a session setting it
    resets afterwards. Through transaction pooling that setting could stay on one server connection while the
    detach runs on another, so the owner goes through usage_partitions_drop, whose timeout holds on any server
    connection. Neither leaves a setting on the pooler's server connections."""
    used: list[str] = []
    concurrently, function = partitions._drop_concurrently, partitions._drop_through_function
    monkeypatch.setattr(partitions, "_drop_concurrently", lambda *a: used.append("concurrently") or concurrently(*a))
    monkeypatch.setattr(partitions, "_drop_through_function", lambda *a: used.append("function") or function(*a))
    day = utcnow().date() - timedelta(days=400)  # older than anything another test leaves
    midnight = datetime.combine(day, datetime.min.time(), UTC)
    with portal_on(through(app.config["SQLALCHEMY_DATABASE_URI"], poolers[mode]), mode) as pooled:
        db.session.execute(partitions.ENSURE_SQL, {"lo": midnight, "hi": midnight})
        db.session.commit()
        dropped = partitions.drop_expired(timedelta(days=399))
        assert [p.name for p in dropped] == [f"api_key_usage_p{day:%Y%m%d}"]
        assert used == ["concurrently" if mode == "session" else "function"]
        assert pooled.config["DATABASE_POOL_MODE"] == mode
        # Two transactions open at once hold two server connections (all of the transaction pool's).
        with db.engine.connect() as first, db.engine.connect() as second:
            assert [conn.scalar(sa.text("SHOW lock_timeout")) for conn in (first, second)] == ["0", "0"]


def test_prepared_statements_fail_under_transaction_pooling(committed, database_server, tmp_path):
    """Why ``DATABASE_POOL_MODE=transaction`` exists. Behind transaction pooling (one server connection here, so
    every client shares it), the default mode's session settings leak into other clients' transactions and a
    second worker cannot even prepare its statements. The transaction mode leaves no setting behind, and its
    workers share the statement prepared on the server connection."""
    if pgbouncer_binary() is None:
        pytest.skip("pgbouncer is not installed (make test installs Debian's pgbouncer when run as root)")
    key_hash = keyformat.key_hash(committed["keys"]["plain"], committed["pepper"])
    with pgbouncer(database_server, "transaction", tmp_path / "pgbouncer", pool_size=1) as port:
        dsn = libpq_dsn(through(committed["url"], port))
        other = psycopg2.connect(dsn)  # another client of the pooler, e.g. a page's connection
        other.autocommit = True
        try:

            def seen_by_other() -> tuple[str, list[str]]:
                with other.cursor() as cur:
                    cur.execute("SELECT current_setting('synchronous_commit')")
                    setting = cur.fetchone()[0]
                    cur.execute("SELECT name FROM pg_prepared_statements ORDER BY 1")
                    return setting, [name for (name,) in cur.fetchall()]

            pooled = [DirectBackend(dsn, pool_mode="transaction") for _ in range(2)]
            assert [backend.verify(key_hash)[STATUS] for backend in pooled] == ["ok", "ok"]
            # A free-plan key takes both statements (its plan's monthly quota is a counter of its own).
            shared = sorted(pooling.statement_name(name) for name in (sql.STATEMENT_NAME, sql.COUNTERS_STATEMENT_NAME))
            assert seen_by_other() == ("on", shared)
            with other.cursor() as cur:
                cur.execute("DISCARD ALL")  # another client resets the shared server connection
            assert pooled[0].verify(key_hash)[STATUS] == "ok"  # prepared again where missing
            for backend in pooled:
                backend.close()

            prepared = [DirectBackend(dsn) for _ in range(2)]  # the default: session settings, PREPARE
            assert prepared[0].verify(key_hash)[STATUS] == "ok"
            setting, names = seen_by_other()
            assert setting == "off"  # another client's commits are no longer durable
            assert sql.STATEMENT_NAME in names
            with pytest.raises(psycopg2.errors.DuplicatePreparedStatement):
                prepared[1].verify(key_hash)
            for backend in prepared:
                backend.close()
        finally:
            other.close()
