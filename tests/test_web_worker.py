"""What a gunicorn web worker loads: the app without Alembic, which only `flask db` needs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROBE = (
    "import json, sys, wsgi; "
    "print(json.dumps({'alembic': 'alembic' in sys.modules, 'db_cli': 'db' in wsgi.app.cli.commands}))"
)


def load_wsgi(database_url: str, **env: str) -> dict[str, bool]:
    out = subprocess.run(  # noqa: S603 - our own module, run with this interpreter
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "DATABASE_URL": database_url, "SECRET_KEY": "s" * 32,
             "API_KEY_PEPPER": "p" * 32, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_web_workers_do_not_load_alembic(database_url):
    """gunicorn.conf.py marks its workers; they serve every page and API without `flask db` or Alembic."""
    assert load_wsgi(database_url, PORTAL_WEB_WORKER="1") == {"alembic": False, "db_cli": False}


def test_the_flask_command_still_migrates(database_url):
    assert load_wsgi(database_url) == {"alembic": True, "db_cli": True}
