from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_migrate import check, downgrade, upgrade

from portal import create_app
from portal.extensions import db
from tests.conftest import drop_database, make_database


def test_upgrade_downgrade_upgrade_and_no_drift(database_server, capsys):
    url = make_database(database_server, "migrations")
    try:
        app = create_app({"SQLALCHEMY_DATABASE_URI": url}, env="testing")
        with app.app_context():
            upgrade()
            downgrade(revision="base")
            engine = sa.create_engine(url)
            with engine.connect() as conn:
                tables = conn.scalars(
                    sa.text(
                        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
                    )
                ).all()
            engine.dispose()
            assert tables == []
            upgrade()
            check()  # raises when the models and the migrations disagree
            from portal.extensions import db

            db.engine.dispose()
    finally:
        drop_database(database_server, url)


def test_invalid_key_rows_become_counts_and_back(database_server):
    """Upgrading moves the malformed and unknown usage rows into per-minute counts; downgrading restores a row
    per call."""
    url = make_database(database_server, "invalid_keys")
    try:
        app = create_app({"SQLALCHEMY_DATABASE_URI": url}, env="testing")
        with app.app_context():
            upgrade(revision="0012")
            engine = sa.create_engine(url)
            insert = sa.text(
                "INSERT INTO api_key_usage (occurred_at, status_code, outcome)"
                " SELECT timestamptz '2026-12-01 10:00:00+00' + (i || ' seconds')::interval, 401, :outcome"
                " FROM generate_series(1, :n) i"
            )
            with engine.begin() as conn:
                conn.execute(insert, {"outcome": "malformed", "n": 70})  # 10:00:01 … 10:01:10
                conn.execute(insert, {"outcome": "unknown", "n": 3})
            upgrade()
            with engine.connect() as conn:
                counts = conn.execute(
                    sa.text(
                        "SELECT to_char(minute AT TIME ZONE 'UTC', 'HH24:MI'), outcome, calls, client_ip"
                        " FROM api_invalid_key_counts ORDER BY 1, 2"
                    )
                ).all()
                left = conn.scalar(sa.text("SELECT count(*) FROM api_key_usage"))
            assert [tuple(r) for r in counts] == [
                ("10:00", "malformed", 59, None),
                ("10:00", "unknown", 3, None),
                ("10:01", "malformed", 11, None),
            ]
            assert left == 0
            downgrade(revision="0012")
            with engine.connect() as conn:
                rows = conn.execute(sa.text("SELECT outcome, count(*) FROM api_key_usage GROUP BY 1 ORDER BY 1")).all()
            assert [tuple(r) for r in rows] == [("malformed", 70), ("unknown", 3)]
            engine.dispose()
            from portal.extensions import db

            db.engine.dispose()
    finally:
        drop_database(database_server, url)


ONE_CALL = sa.text(  # one call of each key (the tests below make one), returning its id
    "INSERT INTO api_key_usage (key_id, organization_id, status_code, outcome)"
    " SELECT id, organization_id, 200, 'ok' FROM api_keys RETURNING id"
)


def _one_key(conn: sa.Connection) -> None:
    """An organization with one key, as the usage tests below need (no portal code: the schema is not the head's)."""
    org = conn.scalar(sa.text("INSERT INTO organizations (name, slug) VALUES ('A', 'a') RETURNING id"))
    conn.execute(
        sa.text(
            "INSERT INTO api_keys (organization_id, name, environment, hint, key_hash)"
            " VALUES (:o, 'k', 'live', 'pk_live_…abcd', '\\x01')"
        ),
        {"o": org},
    )


@contextmanager
def scratch_database(database_server: str, label: str) -> Iterator[tuple[Flask, sa.Engine]]:
    """A database of its own for one migration test, the app on it (nothing migrated yet) and an engine; all
    disposed of, and the database dropped, afterwards."""
    url = make_database(database_server, label)
    engine = sa.create_engine(url)
    app = create_app({"SQLALCHEMY_DATABASE_URI": url}, env="testing")
    try:
        yield app, engine
    finally:
        with app.app_context():
            db.engine.dispose()
        engine.dispose()
        drop_database(database_server, url)


def at_0021_with_a_key(app: Flask, engine: sa.Engine) -> None:
    """The schema before usage partitions, with one organization and key (:func:`_one_key`)."""
    with app.app_context():
        upgrade(revision="0021")
    with engine.begin() as conn:
        _one_key(conn)


def test_usage_becomes_daily_partitions_and_back_keeping_every_row(database_server):
    """0022 copies a populated usage table into daily partitions (and its downgrade back into one table): the
    same rows and ids, the grants, rollup triggers that count each new call once, and the next id after the
    last."""
    url = make_database(database_server, "usage_partitions")
    role = f"portal_reader_{secrets.token_hex(4)}"
    engine = sa.create_engine(url)
    rows_sql = sa.text(
        "SELECT id, key_id, organization_id, occurred_at, endpoint, status_code, latency_ms, outcome,"
        " host(client_ip), user_agent FROM api_key_usage ORDER BY id"
    )

    def state() -> tuple[str, list[Any], int, bool, list[str]]:
        with engine.begin() as conn:
            conn.execute(sa.text("SELECT usage_rollup_fold()"))
            return (
                conn.scalar(sa.text("SELECT relkind::text FROM pg_class WHERE oid = 'api_key_usage'::regclass")),
                [tuple(r) for r in conn.execute(rows_sql)],
                conn.scalar(sa.text("SELECT sum(calls) FROM usage_org_hourly")),
                conn.scalar(sa.text(f"SELECT has_table_privilege('{role}', 'api_key_usage', 'INSERT')")),
                conn.scalars(
                    sa.text("SELECT indexname FROM pg_indexes WHERE tablename = 'api_key_usage' ORDER BY 1")
                ).all(),
            )

    def insert_one() -> int:
        with engine.begin() as conn:
            return conn.scalar(ONE_CALL)

    try:
        app = create_app({"SQLALCHEMY_DATABASE_URI": url}, env="testing")
        with app.app_context():
            at_0021_with_a_key(app, engine)
            with engine.begin() as conn:
                conn.execute(  # 1,200 calls over the last 3 days and 4 hours, through the rollup triggers
                    sa.text(
                        "INSERT INTO api_key_usage (key_id, organization_id, occurred_at, endpoint, status_code,"
                        " latency_ms, outcome, client_ip, user_agent)"
                        " SELECT k.id, k.organization_id, now() - i * interval '160 seconds', '/v1/x' || i % 3,"
                        " 200, i / 7.0, CASE WHEN i % 10 = 0 THEN 'rate_limited' ELSE 'ok' END,"
                        " ('203.0.113.' || i % 5)::inet, 'agent/' || i % 2 FROM api_keys k, generate_series(1, 1200) i"
                    )
                )
                conn.execute(sa.text(f'CREATE ROLE "{role}"'))
                conn.execute(sa.text(f'GRANT SELECT, INSERT ON api_key_usage TO "{role}"'))
            kind, rows, calls, granted, _ = state()
            assert (kind, len(rows), calls, granted) == ("r", 1200, 1200, True)

            upgrade()
            kind, after, calls, granted, indexes = state()
            assert (kind, after, calls, granted) == ("p", rows, 1200, True)  # nothing counted twice
            assert indexes == ["api_key_usage_pkey", "ix_api_key_usage_key_time", "ix_api_key_usage_org_time"]
            with engine.connect() as conn:
                days = conn.scalar(
                    sa.text(
                        "SELECT count(DISTINCT tableoid) = count(DISTINCT (occurred_at AT TIME ZONE 'UTC')::date)"
                        " FROM api_key_usage"
                    )
                )
            assert days  # one partition per day of rows
            assert insert_one() == 1201
            kind, rows, calls, _, _ = state()
            assert (len(rows), calls) == (1201, 1201)

            downgrade(revision="0021")
            kind, after, calls, granted, indexes = state()
            assert (kind, after, calls, granted) == ("r", rows, 1201, True)
            assert indexes == [
                "api_key_usage_pkey",
                "ix_api_key_usage_key_time",
                "ix_api_key_usage_occurred_brin",
                "ix_api_key_usage_org_time",
            ]
            assert insert_one() == 1202
            assert state()[2] == 1202
            with engine.connect() as conn:
                assert conn.scalar(sa.text("SELECT to_regproc('usage_partitions_ensure')")) is None
            upgrade()
            assert state()[0] == "p"
            from portal.extensions import db

            db.engine.dispose()
    finally:
        engine.dispose()
        drop_database(database_server, url)
        admin = sa.create_engine(database_server, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP ROLE IF EXISTS "{role}"'))
        admin.dispose()


def test_a_writer_still_open_when_the_copy_starts_loses_no_row(database_server):
    """0022 copies by id, and ids are drawn at insert, not at commit: a writer still open holds an id below the
    highest committed one. The copy waits for it, so its row is copied once it commits, not skipped."""
    with scratch_database(database_server, "usage_open_writer") as (app, engine):
        at_0021_with_a_key(app, engine)
        open_writer = engine.connect()
        held = open_writer.scalar(ONE_CALL)  # drawn, not committed
        with engine.begin() as conn:
            later = conn.scalar(ONE_CALL)  # a higher id, committed first
        assert later > held

        errors: list[BaseException] = []

        def migrate() -> None:
            try:
                with app.app_context():
                    upgrade()
            except BaseException as exc:  # noqa: BLE001 -- reported by the test's thread
                errors.append(exc)

        migration = threading.Thread(target=migrate, name="upgrade")
        migration.start()
        time.sleep(1.0)  # the migration reads the highest id while the writer is still open
        open_writer.commit()
        open_writer.close()
        migration.join(timeout=120)
        assert not migration.is_alive() and errors == []
        with engine.connect() as conn:
            assert (
                conn.scalar(sa.text("SELECT relkind::text FROM pg_class WHERE oid = 'api_key_usage'::regclass")) == "p"
            )
            assert conn.scalars(sa.text("SELECT id FROM api_key_usage ORDER BY id")).all() == [held, later]


def test_the_partition_drop_function_brings_its_lock_timeout_and_the_downgrade_takes_it_back(database_server):
    """0024 replaces 0022's usage_partitions_drop with one that sets its own lock_timeout; the downgrade restores
    0022's text, without it."""
    config = sa.text("SELECT proconfig, prosrc FROM pg_proc WHERE proname = 'usage_partitions_drop'")
    with scratch_database(database_server, "drop_function") as (app, engine), app.app_context():
        upgrade()
        with engine.connect() as conn:
            settings, source = conn.execute(config).one()
        assert "lock_timeout=10s" in settings and "FINALIZE" in source
        downgrade(revision="0023")
        with engine.connect() as conn:
            settings, source = conn.execute(config).one()
        assert [s for s in settings if s.startswith("lock_timeout")] == [] and "FINALIZE" not in source
        upgrade()


def test_the_usage_migration_finishes_under_a_steady_writer_and_keeps_every_row(database_server):
    """A usage writer inserting all along, as the workers do: 0022's upgrade and its downgrade each finish (the
    writer's inserts queue behind the swap's lock for a moment, and the copy never waits for a queued one), and
    every row the writer committed is in the table after both."""
    written: list[int] = []
    stop = threading.Event()

    with scratch_database(database_server, "usage_steady_writer") as (app, engine):

        def writer() -> None:
            with engine.connect() as conn:
                while not stop.is_set():
                    written.append(conn.scalar(ONE_CALL))
                    conn.commit()
                    time.sleep(0.005)

        try:
            at_0021_with_a_key(app, engine)
            writing = threading.Thread(target=writer, name="usage-writer", daemon=True)
            writing.start()
            for step in (lambda: upgrade(revision="0022"), lambda: downgrade(revision="0021")):
                errors: list[BaseException] = []

                def migrate(step: Any = step, errors: list[BaseException] = errors) -> None:
                    try:
                        with app.app_context():
                            step()
                    except BaseException as exc:  # noqa: BLE001 -- reported by the test's thread
                        errors.append(exc)

                before = len(written)
                migration = threading.Thread(target=migrate, name="migration", daemon=True)
                migration.start()
                migration.join(timeout=120)
                if migration.is_alive():
                    with engine.connect() as conn:  # free the writer and the migration before failing
                        conn.execute(
                            sa.text(
                                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                            )
                        )
                    pytest.fail("the migration waited for a writer queued behind its own lock")
                assert errors == [] and len(written) > before  # the writer went on during the migration
            stop.set()
            writing.join(timeout=30)
            with engine.connect() as conn:
                assert (
                    conn.scalar(sa.text("SELECT relkind::text FROM pg_class WHERE oid = 'api_key_usage'::regclass"))
                    == "r"
                )
                assert conn.scalars(sa.text("SELECT id FROM api_key_usage ORDER BY id")).all() == sorted(written)
        finally:
            stop.set()


def test_the_fold_lanes_downgrade_restores_the_functions_it_replaced(database_server):
    """0023 (and 0024 above it) down again: the rollup and client folds and triggers are 0022's, word for word,
    and the lane functions are gone."""
    functions = ("usage_rollup_fold", "usage_rollup_ingest", "usage_clients_fold", "usage_clients_ingest")
    bodies = sa.text("SELECT proname, prosrc FROM pg_proc WHERE proname = ANY(:names) ORDER BY proname")

    with scratch_database(database_server, "fold_lanes_down") as (app, engine), app.app_context():

        def state() -> tuple[dict[str, str], list[str]]:
            with engine.connect() as conn:
                lanes = conn.scalars(sa.text("SELECT proname FROM pg_proc WHERE proname LIKE '%fold_lane%' ORDER BY 1"))
                return {row[0]: row[1] for row in conn.execute(bodies, {"names": list(functions)})}, list(lanes)

        upgrade(revision="0022")
        before, no_lanes = state()
        upgrade()
        after, lanes = state()
        assert sorted(after) == sorted(functions) and after != before
        assert lanes == ["usage_clients_fold_lanes", "usage_fold_lane", "usage_rollup_fold_lanes"]
        downgrade(revision="0022")
        assert state() == (before, no_lanes) and no_lanes == []
