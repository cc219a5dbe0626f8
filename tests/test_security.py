from __future__ import annotations

import pytest

from portal import create_app
from portal.config import ConfigError


def test_csrf_token_is_required_for_state_changes(csrf_app, owner):
    client = csrf_app.test_client()
    response = client.post("/login", data={"email": owner.email, "password": "correct horse battery"})
    assert response.status_code == 400
    assert "The form expired" in response.get_data(as_text=True)
    page = client.get("/login").get_data(as_text=True)
    token = page.split('name="csrf_token" type="hidden" value="')[1].split('"')[0]
    response = client.post(
        "/login", data={"email": owner.email, "password": "correct horse battery", "csrf_token": token}
    )
    assert response.status_code == 302


def test_production_refuses_to_start_without_secrets(monkeypatch):
    monkeypatch.delenv("SECRET_KEY", raising=False)
    monkeypatch.delenv("API_KEY_PEPPER", raising=False)
    with pytest.raises(ConfigError, match="SECRET_KEY and API_KEY_PEPPER must be set"):
        create_app(env="production")


def test_database_down_at_startup_names_url_without_password(monkeypatch):
    monkeypatch.setenv("SECRET_KEY", "x" * 32)
    monkeypatch.setenv("API_KEY_PEPPER", "y" * 32)
    monkeypatch.setenv("DATABASE_URL", "postgresql://procode:hunter2secret@127.0.0.1:1/procode")
    with pytest.raises(SystemExit) as excinfo:
        create_app(env="production")
    message = str(excinfo.value)
    assert "127.0.0.1:1/procode" in message
    assert "hunter2secret" not in message


def test_pages_send_security_headers(client):
    response = client.get("/login")
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "<script>" not in response.get_data(as_text=True)


def test_unknown_page_is_a_plain_404(client):
    response = client.get("/no/such/page")
    assert response.status_code == 404
    assert "Page not found" in response.get_data(as_text=True)


def test_unexpected_error_is_a_plain_page_with_request_id(client, auth, org, owner, monkeypatch, caplog):
    from portal.keys import services

    def broken(*args, **kwargs):
        raise RuntimeError("boom: internal detail")

    monkeypatch.setattr(services, "list_keys", broken)
    auth.login(owner)
    response = client.get(f"/orgs/{org.slug}/keys/", headers={"X-Request-ID": "req-123"})
    body = response.get_data(as_text=True)
    assert response.status_code == 500
    assert "req-123" in body and "Something went wrong" in body
    assert "boom" not in body and "Traceback" not in body
    assert any("req-123" in record.getMessage() for record in caplog.records)


def test_a_failing_statement_is_logged_without_the_values_bound_to_it(client, auth, org, owner, monkeypatch, caplog):
    """The engines hide bound parameters: a statement's error, logged with its traceback, shows its SQL but not
    a mail's body, a reset link or a key it was given."""
    import sqlalchemy as sa

    from portal.extensions import db
    from portal.keys import services

    link = "https://portal.example/password/reset/one-time-token-Yw3kP9"

    def broken(*args, **kwargs):
        db.session.execute(sa.text("SELECT 1 / 0 WHERE :body <> ''"), {"body": f"Reset it here: {link}"})

    monkeypatch.setattr(services, "list_keys", broken)
    auth.login(owner)
    response = client.get(f"/orgs/{org.slug}/keys/", headers={"X-Request-ID": "req-sql-1"})
    assert response.status_code == 500
    logged = [r for r in caplog.records if r.name == "portal.errors"]
    assert len(logged) == 1 and logged[0].exc_info is not None
    assert "division by zero" in caplog.text and "SQL parameters hidden" in caplog.text
    assert link not in caplog.text and "one-time-token" not in caplog.text
    assert db.engine.hide_parameters


def test_engine_options_given_to_the_app_still_hide_parameters(database_url):
    from portal.config import CONFIGS
    from portal.extensions import db

    assert all(config.SQLALCHEMY_ENGINE_OPTIONS["hide_parameters"] is True for config in CONFIGS.values())
    app = create_app(
        {"SQLALCHEMY_DATABASE_URI": database_url, "SQLALCHEMY_ENGINE_OPTIONS": {"pool_size": 2}}, env="testing"
    )
    with app.app_context():
        assert db.engine.hide_parameters and db.engine.pool.size() == 2
        db.engine.dispose()


@pytest.mark.parametrize("missing", ["SECRET_KEY", "API_KEY_PEPPER"])
def test_production_refuses_to_start_without_either_secret(monkeypatch, missing):
    monkeypatch.setenv("SECRET_KEY", "x" * 32)
    monkeypatch.setenv("API_KEY_PEPPER", "y" * 32)
    monkeypatch.delenv(missing)
    with pytest.raises(ConfigError, match=f"{missing} must be set"):
        create_app(env="production")


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u:p@h:5433/d", "postgresql+psycopg2://u:p@h:5433/d"),
        ("postgres://u:p@h/d", "postgresql+psycopg2://u:p@h/d"),
        ("postgresql+psycopg://u@h/d", "postgresql+psycopg2://u@h/d"),
        ("postgresql+psycopg2://u@h/d", "postgresql+psycopg2://u@h/d"),
    ],
)
def test_database_urls_are_pinned_to_psycopg2(given, expected):
    from portal.db import normalize_url

    assert normalize_url(given).split("?")[0] == expected


def test_database_urls_get_timeouts_unless_they_set_their_own():
    from sqlalchemy.engine import make_url

    from portal.db import normalize_url

    query = make_url(normalize_url("postgresql://u@h/d?connect_timeout=9&sslmode=require")).query
    assert query["connect_timeout"] == "9"  # the URL's own value wins
    assert query["sslmode"] == "require"
    assert query["tcp_user_timeout"] == "15000"
    assert query["keepalives_idle"] == "30"
    socket_url = make_url(normalize_url("postgresql://u@/d?host=/var/run/postgresql"))
    assert socket_url.query["host"] == "/var/run/postgresql" and socket_url.query["connect_timeout"] == "5"


def test_libpq_configuration_is_not_overridden_by_the_defaults(monkeypatch):
    from sqlalchemy.engine import make_url

    from portal.db import normalize_url

    monkeypatch.setenv("PGCONNECT_TIMEOUT", "30")
    assert "connect_timeout" not in make_url(normalize_url("postgresql://u@h/d")).query
    assert "connect_timeout" not in make_url(normalize_url("postgresql://u@/d?service=portal")).query
    monkeypatch.delenv("PGCONNECT_TIMEOUT")
    monkeypatch.setenv("PGSERVICE", "portal")
    assert "tcp_user_timeout" not in make_url(normalize_url("postgresql://u@h/d")).query


def test_non_postgresql_urls_are_refused():
    from portal.db import normalize_url

    with pytest.raises(ValueError, match="only PostgreSQL"):
        normalize_url("mysql://u@h/d")
