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
