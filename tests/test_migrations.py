from __future__ import annotations

import sqlalchemy as sa
from flask_migrate import check, downgrade, upgrade

from portal import create_app
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
