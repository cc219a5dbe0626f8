"""What a gunicorn web worker loads: the app without Alembic, which only `flask db` needs."""

from __future__ import annotations

from tests.scripts import run_python

PROBE = (
    "import json, sys, wsgi; "
    "print(json.dumps({'alembic': 'alembic' in sys.modules, 'db_cli': 'db' in wsgi.app.cli.commands}))"
)


def load_wsgi(database_url: str, **env: str) -> dict[str, bool]:
    secrets = {"DATABASE_URL": database_url, "SECRET_KEY": "s" * 32, "API_KEY_PEPPER": "p" * 32}
    return run_python(PROBE, **secrets, **env)  # type: ignore[no-any-return]


def test_web_workers_do_not_load_alembic(database_url):
    """gunicorn.conf.py marks its workers; they serve every page and API without `flask db` or Alembic."""
    assert load_wsgi(database_url, PORTAL_WEB_WORKER="1") == {"alembic": False, "db_cli": False}


def test_the_flask_command_still_migrates(database_url):
    assert load_wsgi(database_url) == {"alembic": True, "db_cli": True}
