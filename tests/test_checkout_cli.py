"""The ``flask`` CLI in a developer's checkout: after the development setup it needs no extra variables, and a
production process without secrets refuses in one line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import drop_database, make_database

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def checkout_copy(target: Path) -> Path:
    """The files a checkout serves from, copied as a developer's clone would have them."""
    for folder in ("portal", "migrations", "templates", "static"):
        shutil.copytree(ROOT / folder, target / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("wsgi.py", ".flaskenv", "gunicorn.conf.py"):
        shutil.copy(ROOT / name, target / name)
    return target


def developer_env() -> dict[str, str]:
    """A shell with nothing exported: no PORTAL_ENV, FLASK_APP or database URL."""
    drop = {"PORTAL_ENV", "FLASK_APP", "DATABASE_URL", "TEST_DATABASE_URL", "SECRET_KEY", "API_KEY_PEPPER"}
    return {name: value for name, value in os.environ.items() if name not in drop}


def run(checkout: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own tools
        args, cwd=checkout, env=developer_env(), capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def scratch_database(database_server: str) -> str:
    url = make_database(database_server, "checkout")
    yield url
    drop_database(database_server, url)


def test_cli_works_in_a_checkout_after_the_development_setup(tmp_path, scratch_database):
    checkout = checkout_copy(tmp_path)
    setup = subprocess.run(  # noqa: S603 - what `make dev` runs first
        [sys.executable, "-m", "portal.devenv", ".env"],
        cwd=checkout,
        env={**developer_env(), "DATABASE_URL": scratch_database},
        capture_output=True,
        text=True,
        check=True,
    )
    assert "wrote .env" in setup.stdout
    dotenv = (checkout / ".env").read_text()
    assert "PORTAL_ENV=development" in dotenv and f"DATABASE_URL={scratch_database}" in dotenv
    assert oct((checkout / ".env").stat().st_mode & 0o777) == "0o600"

    for command in (["db", "upgrade"], ["db", "downgrade", "base"], ["db", "upgrade"], ["seed"]):
        result = run(checkout, str(BIN / "flask"), *command)
        assert result.returncode == 0, (command, result.stderr)
        assert "Traceback" not in result.stdout + result.stderr
    assert "demo@procode.dev" in result.stdout

    again = subprocess.run(  # noqa: S603 - a second `make dev` keeps the secrets
        [sys.executable, "-m", "portal.devenv", ".env"], cwd=checkout, env=developer_env(), check=True
    )
    assert again.returncode == 0 and (checkout / ".env").read_text() == dotenv


def test_a_database_behind_the_migrations_is_named_in_one_line(tmp_path, scratch_database):
    checkout = checkout_copy(tmp_path)
    (checkout / ".env").write_text(f"PORTAL_ENV=development\nDATABASE_URL={scratch_database}\n")
    result = run(checkout, str(BIN / "flask"), "routes")
    assert result.returncode == 0
    [line] = [line for line in result.stderr.splitlines() if "flask db upgrade" in line]
    assert "none (empty database)" in line and "expects" in line


def test_production_without_secrets_refuses_in_one_line(tmp_path):
    checkout = checkout_copy(tmp_path)  # no .env: PORTAL_ENV unset means production
    for command in (
        [str(BIN / "flask"), "db", "upgrade"],
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--bind", "127.0.0.1:0", "wsgi:app"],
    ):
        result = run(checkout, *command)
        assert result.returncode != 0
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert errors == [
            "error: SECRET_KEY and API_KEY_PEPPER must be set in the environment for production "
            "(see .env.example); refusing to start with a guessable secret."
        ]
        assert "Traceback" not in result.stderr


def test_an_unknown_portal_env_is_one_line(tmp_path):
    checkout = checkout_copy(tmp_path)
    (checkout / ".env").write_text("PORTAL_ENV=staging\n")
    result = run(checkout, str(BIN / "flask"), "seed")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: PORTAL_ENV must be one of production, development, testing (got 'staging')."
    )


def test_each_command_shows_an_example(tmp_path):
    checkout = checkout_copy(tmp_path)
    (checkout / ".env").write_text("PORTAL_ENV=testing\n")
    try:
        result = run(checkout, str(BIN / "flask"), "keys", "create", "--help")
    finally:  # loading the app started the copy's own embedded server, which outlives commands by design
        run(checkout, sys.executable, "-m", "portal.db", "stop")
    assert result.returncode == 0
    assert "Examples:" in result.stdout and "flask keys create --org acme" in result.stdout
