"""Raw usage events live in one partition per UTC day: made ahead by the workers, made on the spot by a write
that finds none, dropped whole by retention while the rollups keep the history.

These tests commit for real (partitions are DDL, and a concurrent detach waits for every open transaction), so
they run on a database of their own, migrated once for the module.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg2
import pytest
import sqlalchemy as sa
from flask import Flask
from flask_migrate import upgrade

from portal import create_app
from portal.extensions import db
from portal.timeutil import utcnow
from portal.usage import forensics, maintenance, partitions
from portal.usage.services import RECENT_CALLS_SQL
from portal.verification import spill
from portal.verification.backend import libpq_dsn
from portal.verification.usage_writer import BufferedRecorder
from tests import factories
from tests.conftest import drop_database, make_database
from tests.usage_helpers import event, record

pytestmark = pytest.mark.concurrency


@pytest.fixture(scope="module")
def partitioned_app(database_server: str) -> Iterator[Flask]:
    url = make_database(database_server, "partitions")
    app = create_app({"SQLALCHEMY_DATABASE_URI": url}, env="testing")
    with app.app_context():
        upgrade()
        db.engine.dispose()
    yield app
    with app.app_context():
        db.engine.dispose()
    drop_database(database_server, url)


@pytest.fixture
def papp(partitioned_app: Flask) -> Iterator[Flask]:
    with partitioned_app.app_context():
        yield partitioned_app
        db.session.remove()


@pytest.fixture
def key(papp: Flask) -> Any:
    org = factories.org(plan="enterprise")
    return factories.api_key(org, None, environment="live").api_key


def day_name(day: date) -> str:
    return f"api_key_usage_p{day:%Y%m%d}"


def names() -> list[str]:
    db.session.rollback()
    return [p.name for p in partitions.listing()]


def today() -> date:
    return utcnow().date()


def dsn(app: Flask, user: str | None = None) -> str:
    url = sa.make_url(app.config["SQLALCHEMY_DATABASE_URI"])
    if user:
        url = url.set(username=user, password=None)
    return libpq_dsn(url.render_as_string(hide_password=False))


def drop_days_after(day: date) -> None:
    """Drop the partitions after ``day`` outright (the owner may), so a test can watch them being made."""
    for name in names():
        if name > day_name(day):
            db.session.execute(sa.text(f'DROP TABLE "{name}"'))
    db.session.commit()


def test_the_migration_leaves_partitions_for_a_week_ahead_and_no_default(papp):
    found = names()
    for n in range(8):
        assert day_name(today() + timedelta(days=n)) in found
    defaults = db.session.scalar(
        sa.text(
            "SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'api_key_usage'::regclass AND pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT'"
        )
    )
    assert defaults == 0


def test_rows_land_in_the_partition_of_their_utc_day(papp, key):
    now = utcnow()
    times = [now, now + timedelta(days=2), now - timedelta(days=40)]
    record([event(key, at) for at in times])
    db.session.commit()
    rows = db.session.execute(
        sa.text("SELECT tableoid::regclass::text, occurred_at FROM api_key_usage WHERE key_id = :k ORDER BY 2"),
        {"k": key.id},
    ).all()
    assert [(table, at) for table, at in rows] == [(day_name(at.astimezone(UTC).date()), at) for at in sorted(times)]


def test_a_write_that_finds_no_partition_makes_it_and_loses_no_row(papp, key, caplog):
    later = utcnow().replace(microsecond=0) + timedelta(days=30)  # beyond the week made ahead
    assert day_name(later.date()) not in names()
    recorder = BufferedRecorder(dsn(papp), interval=3600)
    ids = (str(key.id), str(key.organization_id))
    recorder.add((*ids, utcnow(), "/v1/now", 200, 1.0, "ok", None, None))
    recorder.add((*ids, later, "/v1/later", 200, 1.0, "ok", None, None))
    with caplog.at_level(logging.WARNING, logger="portal.verification.usage"):
        assert recorder.flush() == 2
    recorder.close()
    assert recorder.dropped == 0
    assert "a batch found no usage partition; made 1 and wrote it again" in caplog.text
    assert day_name(later.date()) in names()
    stored = db.session.scalars(
        sa.text("SELECT endpoint FROM api_key_usage WHERE key_id = :k AND endpoint LIKE '/v1/%' ORDER BY 1"),
        {"k": key.id},
    ).all()
    assert stored == ["/v1/later", "/v1/now"]


def test_a_spill_file_replayed_into_a_day_without_a_partition_makes_it_and_loses_no_row(papp, key, tmp_path, caplog):
    """A file kept over a long outage (or from a clock ahead) holds rows for a day nobody made yet."""
    later = utcnow().replace(microsecond=0) + timedelta(days=31)
    assert day_name(later.date()) not in names()
    ids = (str(key.id), str(key.organization_id))
    rows = [(*ids, utcnow(), "/v1/spilled-now", 200, 1.0, "ok", None, None)]
    rows += [(*ids, later, "/v1/spilled-later", 200, 1.0, "ok", None, None) for _ in range(3)]
    spill.write(tmp_path, [spill.Batch(rows, {})])
    conn = psycopg2.connect(dsn(papp))
    try:
        with caplog.at_level(logging.WARNING, logger="portal.verification.usage"):
            report = spill.replay(conn, tmp_path)
    finally:
        conn.close()
    assert (report.files, report.rows, report.refused) == (1, 4, 0)
    assert "usage spill replay: a batch found no usage partition; made 1 and wrote it again" in caplog.text
    assert day_name(later.date()) in names()
    stored = db.session.execute(
        sa.text(
            "SELECT endpoint, count(*) FROM api_key_usage WHERE key_id = :k AND endpoint LIKE '/v1/spilled-%'"
            " GROUP BY 1 ORDER BY 1"
        ),
        {"k": key.id},
    ).all()
    assert [tuple(row) for row in stored] == [("/v1/spilled-later", 3), ("/v1/spilled-now", 1)]
    assert spill.pending(tmp_path) == []


def test_the_workers_maintenance_keeps_partitions_ahead(papp):
    drop_days_after(today() + timedelta(days=1))
    recorder = BufferedRecorder(dsn(papp), interval=3600, partitions_ahead=12)
    assert recorder.maintain(partitions=True) in (True, False)
    assert recorder.ensure_partitions() == 0  # nothing left to make
    recorder.close()
    found = names()
    assert [day_name(today() + timedelta(days=n)) in found for n in range(13)] == [True] * 13


def test_two_workers_maintaining_at_once_make_each_partition_once(papp):
    for ahead in (20, 26, 32):
        drop_days_after(today() + timedelta(days=1))
        recorders = [BufferedRecorder(dsn(papp), interval=3600, partitions_ahead=ahead) for _ in range(2)]
        for recorder in recorders:
            recorder._connection()  # connected beforehand, so both reach the function together
        start = threading.Barrier(2)
        made: list[int | None] = []

        def maintain(recorder: BufferedRecorder, start: threading.Barrier, made: list[int | None]) -> None:
            start.wait()
            made.append(recorder.ensure_partitions())

        threads = [threading.Thread(target=maintain, args=(r, start, made)) for r in recorders]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for recorder in recorders:
            recorder.close()
        assert None not in made  # neither failed
        assert sum(m or 0 for m in made) == ahead - 1  # tomorrow existed; each later day made once
        found = names()
        assert all(day_name(today() + timedelta(days=n)) in found for n in range(ahead + 1))
        assert len(found) == len(set(found))


def test_retention_drops_whole_expired_days_and_the_rollups_keep_them(papp, key):
    now = utcnow()
    noon = now.replace(hour=12, minute=0, second=0, microsecond=0)  # two calls on one UTC day, whatever the hour
    old = [noon - timedelta(days=100), noon - timedelta(days=95), noon - timedelta(days=95, hours=1)]
    recent = [now - timedelta(days=1), now]
    record([event(key, at) for at in old + recent])
    db.session.commit()
    maintenance.fold()
    result = papp.test_cli_runner().invoke(args=["usage", "prune"])
    assert result.exit_code == 0, result.output
    first, last = (now - timedelta(days=100)).date(), (now - timedelta(days=95)).date()
    assert f"Dropped 2 partitions of raw events older than 90 days ({first} to {last};" in result.output
    found = names()
    assert day_name(first) not in found and day_name(last) not in found
    assert day_name(now.date()) in found
    raw = db.session.scalar(sa.text("SELECT count(*) FROM api_key_usage WHERE key_id = :k"), {"k": key.id})
    assert raw == len(recent)
    daily = dict(
        db.session.execute(sa.text("SELECT day, calls FROM usage_key_daily WHERE key_id = :k"), {"k": key.id}).all()
    )
    assert sum(daily.values()) == len(old) + len(recent)
    assert daily[first] == 1 and daily[last] == 2
    assert maintenance.rollup_mismatches(key.organization_id, since=now - timedelta(days=2)) == {}


def test_the_partitions_commands(papp):
    old = today() - timedelta(days=200)
    midnight = datetime.combine(old, datetime.min.time(), UTC)
    db.session.execute(partitions.ENSURE_SQL, {"lo": midnight, "hi": midnight})
    db.session.commit()
    drop_days_after(today() + timedelta(days=3))
    runner = papp.test_cli_runner()

    created = runner.invoke(args=["usage", "partitions", "create", "--ahead", "10"])
    assert created.exit_code == 0, created.output
    assert created.output == "Created 7 partitions; partitions cover today to 10 days ahead.\n"

    listed = runner.invoke(args=["usage", "partitions", "list"]).output
    assert f"{day_name(today())} " in listed and f"{today():%Y-%m-%d}" in listed
    assert listed.splitlines()[0].split() == ["partition", "UTC", "day", "rows", "(est.)", "size"]
    assert listed.rstrip().endswith("10 days ahead of today.")

    refused = runner.invoke(args=["usage", "partitions", "drop-expired", "--older-than", "12h"])
    assert refused.exit_code != 0 and "kept at least one day" in refused.output

    dropped = runner.invoke(args=["usage", "partitions", "drop-expired"])
    assert dropped.exit_code == 0, dropped.output
    assert dropped.output.startswith(f"Dropped 1 partition of raw events older than 90 days ({old} to {old}; ")
    assert day_name(old) not in names()
    again = runner.invoke(args=["usage", "partitions", "drop-expired"]).output
    assert again == "No partition of raw events is older than 90 days.\n"


@pytest.fixture
def app_role(papp: Flask) -> Iterator[str]:
    """A role like the portal's in production (docs/POSTGRESQL_SETUP.md): reads and writes rows, runs the
    functions, cannot alter or drop a table."""
    role = f"portal_app_{uuid.uuid4().hex[:8]}"
    db.session.execute(sa.text(f'CREATE ROLE "{role}" LOGIN'))
    for grant in (
        "USAGE ON SCHEMA public",
        "SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public",
        "USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public",
        "EXECUTE ON ALL FUNCTIONS IN SCHEMA public",
    ):
        db.session.execute(sa.text(f'GRANT {grant} TO "{role}"'))
    db.session.commit()
    yield role
    db.session.rollback()
    db.session.execute(sa.text(f'DROP OWNED BY "{role}"'))
    db.session.execute(sa.text(f'DROP ROLE "{role}"'))
    db.session.commit()


def test_the_apps_role_keeps_partitions_through_the_functions(papp, key, app_role):
    old = datetime.combine(today() - timedelta(days=120), datetime.min.time(), UTC)
    record([event(key, old + timedelta(hours=3))])
    db.session.commit()
    drop_days_after(today() + timedelta(days=1))

    recorder = BufferedRecorder(dsn(papp, app_role), interval=3600, partitions_ahead=9)
    assert recorder.ensure_partitions() == 8
    later = utcnow() + timedelta(days=40)
    recorder.add((str(key.id), str(key.organization_id), later, "/v1/role", 200, 1.0, "ok", None, None))
    assert recorder.flush() == 1
    recorder.close()
    assert day_name(later.date()) in names()

    role_app = create_app(
        {
            "SQLALCHEMY_DATABASE_URI": sa.make_url(papp.config["SQLALCHEMY_DATABASE_URI"])
            .set(username=app_role)
            .render_as_string(hide_password=False)
        },
        env="testing",
    )
    with role_app.app_context():
        with pytest.raises(sa.exc.ProgrammingError, match="must be owner"):
            db.session.execute(sa.text(f"ALTER TABLE api_key_usage DETACH PARTITION {day_name(old.date())}"))
        db.session.rollback()
        dropped = partitions.drop_expired(timedelta(days=90))
        assert [p.name for p in dropped] == [day_name(old.date())]
        with pytest.raises(sa.exc.InternalError, match="in the future"):
            db.session.execute(
                sa.text("SELECT usage_partitions_drop(:p, now() + interval '1 day')"), {"p": day_name(today())}
            )
        db.session.rollback()
        db.engine.dispose()
    assert day_name(old.date()) not in names()


@contextmanager
def as_role(papp: Flask, role: str) -> Iterator[Flask]:
    """An app instance connecting as ``role``, in its own app context; its connections closed after."""
    role_app = create_app(
        {
            "SQLALCHEMY_DATABASE_URI": sa.make_url(papp.config["SQLALCHEMY_DATABASE_URI"])
            .set(username=role)
            .render_as_string(hide_password=False)
        },
        env="testing",
    )
    try:
        with role_app.app_context():
            yield role_app
    finally:
        with role_app.app_context():
            db.session.remove()
            db.engine.dispose()


def make_days(*days: date) -> None:
    """Partitions for these days (through the function, as the workers make them), committed."""
    for day in days:
        midnight = datetime.combine(day, datetime.min.time(), UTC)
        db.session.execute(partitions.ENSURE_SQL, {"lo": midnight, "hi": midnight})
    db.session.commit()


def detach(day: date) -> None:
    """What a prune that died between its DETACH and its DROP leaves: the day's table, no longer a partition."""
    db.session.execute(sa.text(f"ALTER TABLE api_key_usage DETACH PARTITION {day_name(day)}"))
    db.session.commit()


def leftover_names() -> list[str]:
    db.session.rollback()
    return [p.name for p in partitions.leftovers()]


def function_config(name: str) -> list[str]:
    return db.session.scalar(sa.text("SELECT proconfig FROM pg_proc WHERE proname = :n"), {"n": name}) or []


DROP_FUNCTION = "usage_partitions_drop(text, timestamptz)"


def test_the_drop_function_gives_up_after_its_own_lock_timeout_whatever_the_session_says(papp, app_role):
    """Behind a transaction pooler a session's SET lands on one server connection and the next statement may
    run on another: the function carries its timeout, so a drop queued behind a long read gives up instead of
    waiting as long as the read, with every insert queued behind its ACCESS EXCLUSIVE request."""
    assert f"lock_timeout={partitions.LOCK_TIMEOUT_MS // 1000}s" in function_config("usage_partitions_drop")
    assert not any(c.startswith("lock_timeout=") for c in function_config("usage_partitions_ensure"))
    old = today() - timedelta(days=150)
    make_days(old)
    # The same mechanism with a timeout short enough for a test (the owner may change it; restored below).
    db.session.execute(sa.text(f"ALTER FUNCTION {DROP_FUNCTION} SET lock_timeout = '300ms'"))
    db.session.commit()
    reader = psycopg2.connect(dsn(papp))  # a long read: its transaction holds ACCESS SHARE on the table
    app_conn = psycopg2.connect(dsn(papp, app_role))
    app_conn.autocommit = True
    try:
        with reader.cursor() as cur:
            cur.execute("SELECT count(*) FROM api_key_usage")
        with app_conn.cursor() as cur:
            cur.execute("SET lock_timeout = 0")  # what the server connection a pooler hands over may have
            started = time.monotonic()
            with pytest.raises(psycopg2.errors.LockNotAvailable):
                cur.execute("SELECT usage_partitions_drop(%s, now() - interval '90 days')", (day_name(old),))
            assert time.monotonic() - started < 5
        with as_role(papp, app_role), pytest.raises(sa.exc.OperationalError, match="lock timeout"):
            partitions.drop_expired(timedelta(days=90))
        assert day_name(old) in names()
        reader.rollback()  # the read ends: the same drop goes through
        with app_conn.cursor() as cur:
            cur.execute("SELECT usage_partitions_drop(%s, now() - interval '90 days')", (day_name(old),))
            assert cur.fetchone()[0] is True
        assert day_name(old) not in names() and day_name(old) not in leftover_names()
    finally:
        reader.close()
        app_conn.close()
        db.session.rollback()
        db.session.execute(
            sa.text(f"ALTER FUNCTION {DROP_FUNCTION} SET lock_timeout = '{partitions.LOCK_TIMEOUT_MS // 1000}s'")
        )
        db.session.commit()


@pytest.mark.parametrize("through", ["owner", "function"])
def test_two_prunes_at_once_both_succeed_and_drop_each_partition_once(papp, app_role, through):
    """The owner's concurrent detaches, and the app role's function calls: the second prune skips what the
    first detached or dropped meanwhile."""
    days = [today() - timedelta(days=n) for n in (133, 132, 131, 130)]
    make_days(*days)
    with ExitStack() as stack:
        app = stack.enter_context(as_role(papp, app_role)) if through == "function" else papp
        start = threading.Barrier(2)
        results: list[list[str]] = []
        errors: list[BaseException] = []

        def prune() -> None:
            with app.app_context():
                try:
                    start.wait()
                    results.append([p.name for p in partitions.drop_expired(timedelta(days=90))])
                except BaseException as exc:  # reported below
                    errors.append(exc)
                finally:
                    db.session.remove()

        threads = [threading.Thread(target=prune) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
    assert sorted(results[0] + results[1]) == sorted(day_name(d) for d in days)  # each once, by one of them
    assert not set(map(day_name, days)) & set(names() + leftover_names())


@pytest.mark.parametrize("through", ["owner", "function"])
def test_a_table_a_prune_detached_and_did_not_drop_is_listed_then_dropped_by_the_next(papp, app_role, through):
    expired, recent = today() - timedelta(days=140), today() - timedelta(days=30)
    building = today() - timedelta(days=300)  # a partition of api_key_usage_next, as migration 0022 makes them
    make_days(expired, recent)
    detach(expired)
    detach(recent)  # detached by hand, say, and not past retention: left alone
    db.session.execute(sa.text("CREATE TABLE api_key_usage_next (LIKE api_key_usage) PARTITION BY RANGE (occurred_at)"))
    db.session.execute(
        sa.text(
            f"CREATE TABLE {day_name(building)} PARTITION OF api_key_usage_next"
            f" FOR VALUES FROM ('{building} 00:00:00+00') TO ('{building + timedelta(days=1)} 00:00:00+00')"
        )
    )
    db.session.execute(sa.text("CREATE TABLE api_key_usage_p20251399 (LIKE api_key_usage)"))  # no date
    db.session.commit()
    try:
        assert leftover_names() == [day_name(expired), day_name(recent)]
        assert day_name(expired) not in names()
        listed = papp.test_cli_runner().invoke(args=["usage", "partitions", "list"]).output.splitlines()
        assert [line.split()[0] for line in listed if "detached," in line] == [day_name(expired), day_name(recent)]
        assert next(line for line in listed if day_name(expired) in line).endswith("(detached, to be dropped)")
        assert next(line for line in listed if day_name(recent) in line).endswith(
            "(detached, kept until past retention)"
        )
        assert "2 tables detached by a prune that did not drop them" in "\n".join(listed)
        assert day_name(building) not in "\n".join(listed) and "api_key_usage_p20251399" not in "\n".join(listed)

        if through == "owner":
            result = papp.test_cli_runner().invoke(args=["usage", "prune"])
            assert result.exit_code == 0, result.output
            assert result.output.startswith(f"Dropped 1 partition of raw events older than 90 days ({expired} to")
        else:
            with as_role(papp, app_role):
                assert [p.name for p in partitions.drop_expired(timedelta(days=90))] == [day_name(expired)]
                for name in (day_name(recent), day_name(building), "api_key_usage_p20251399", "api_key_usage_next"):
                    dropped = db.session.scalar(
                        sa.text("SELECT usage_partitions_drop(:n, now() - interval '90 days')"), {"n": name}
                    )
                    assert dropped is False, name
                db.session.rollback()
        assert leftover_names() == [day_name(recent)]
        kept = db.session.scalars(
            sa.text("SELECT relname FROM pg_class WHERE relname IN (:a, :b, 'api_key_usage_p20251399') ORDER BY 1"),
            {"a": day_name(recent), "b": day_name(building)},
        ).all()
        assert kept == sorted([day_name(recent), day_name(building), "api_key_usage_p20251399"])
    finally:
        db.session.rollback()
        for table in ("api_key_usage_next", "api_key_usage_p20251399", day_name(recent)):
            db.session.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
        db.session.commit()


def test_the_apps_role_finishes_an_interrupted_concurrent_detach(papp, app_role):
    old = today() - timedelta(days=160)
    make_days(old)
    reader = psycopg2.connect(dsn(papp))
    owner = psycopg2.connect(dsn(papp))
    owner.autocommit = True
    try:
        with reader.cursor() as cur:
            cur.execute("SELECT count(*) FROM api_key_usage")
        with owner.cursor() as cur:
            cur.execute("SET lock_timeout = '300ms'")
            with pytest.raises(psycopg2.errors.LockNotAvailable):  # its second step waits for the read
                cur.execute(f"ALTER TABLE api_key_usage DETACH PARTITION {day_name(old)} CONCURRENTLY")
    finally:
        reader.close()
        owner.close()
    db.session.rollback()
    assert [p.detaching for p in partitions.listing() if p.name == day_name(old)] == [True]
    with as_role(papp, app_role):
        assert [p.name for p in partitions.drop_expired(timedelta(days=90))] == [day_name(old)]
    assert day_name(old) not in names() + leftover_names()


def test_only_granted_roles_may_run_the_functions(papp):
    role = f"portal_other_{uuid.uuid4().hex[:8]}"
    db.session.execute(sa.text(f'CREATE ROLE "{role}"'))
    db.session.commit()
    try:
        db.session.execute(sa.text(f'SET ROLE "{role}"'))
        with pytest.raises(sa.exc.ProgrammingError, match="permission denied for function usage_partitions_drop"):
            db.session.execute(sa.text("SELECT usage_partitions_drop('x', now() - interval '90 days')"))
    finally:
        db.session.rollback()
        db.session.execute(sa.text(f'DROP ROLE "{role}"'))
        db.session.commit()


def scanned_partitions(sql: sa.TextClause, params: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The partitions a statement's plan names, and those it actually read (EXPLAIN ANALYZE: scans that ran)."""
    plan = db.session.scalar(sa.text(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql.text}"), params)
    planned: list[str] = []
    read: list[str] = []

    def walk(node: dict[str, Any]) -> None:
        name = node.get("Relation Name", "")
        if name.startswith("api_key_usage_p"):
            planned.append(name)
            if node.get("Actual Loops", 0) > 0:
                read.append(name)
        for child in node.get("Plans", []):
            walk(child)

    walk((plan if isinstance(plan, list) else json.loads(plan))[0]["Plan"])
    return planned, read


def test_a_keys_raw_reads_plan_only_the_days_that_hold_its_newest_calls(papp, key):
    now = utcnow().replace(minute=30)
    days = [now.date(), (now - timedelta(days=5)).date(), (now - timedelta(days=20)).date()]
    record([event(key, now - timedelta(days=d, minutes=m)) for d in (0, 5, 20) for m in range(60)])
    db.session.commit()
    maintenance.fold()
    params = {"key": key.id, "org": key.organization_id}

    since = partitions.key_events_since(key.id, 1)
    planned, read = scanned_partitions(forensics.LAST_USE_SQL, {**params, "since": since})
    past = [name for name in read if name <= day_name(days[0])]  # later days' (empty) partitions come first
    assert past == [day_name(days[0])]
    assert min(planned) == day_name(days[0])  # not a partition older than the key's newest hour

    since = partitions.key_events_since(key.id, 151)  # page 3 of 50, and the row that tells a page 4 follows
    planned, read = scanned_partitions(RECENT_CALLS_SQL, {**params, "since": since, "limit": 51, "offset": 100})
    assert {day_name(d) for d in days} <= set(read) and min(read) == day_name(days[2])
    assert min(planned) == day_name(days[2])
    oldest_hour = (now - timedelta(days=20, minutes=59)).replace(minute=0, second=0, microsecond=0)
    assert partitions.key_events_since(key.id, 10_000) == oldest_hour  # fewer calls than asked: all of them


def test_a_rebuild_reads_only_the_days_it_rebuilds(papp, key):
    since = datetime.combine(today() - timedelta(days=2), datetime.min.time(), UTC)
    sql = maintenance.REBUILD_SQL
    plan = db.session.execute(sa.text(f"EXPLAIN {sql}"), {"since": since, "org": key.organization_id}).scalars()
    read = {line.split(" on ")[1].split()[0] for line in plan if " on api_key_usage_p" in line}
    assert read and all(name >= day_name(since.date()) for name in read)
