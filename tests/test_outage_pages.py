"""While the database is unreachable, pages answer the portal's own 503 page, never a bare 500."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from portal import create_app
from portal.models.user import LOGIN_ID_PREFIX
from tests import factories

# The database of these apps is gone: the per-test transaction of the shared app must not stand in for it.
pytestmark = pytest.mark.concurrency


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def dead_app(app: Flask) -> Iterator[Flask]:
    """The same portal (same secrets, so a signed-in cookie carries over) with its database gone."""
    url = f"postgresql://postgres@127.0.0.1:{_closed_port()}/procode?connect_timeout=2"
    dead = create_app({"SQLALCHEMY_DATABASE_URI": url}, env="testing")
    dead.test_client_class = app.test_client_class
    yield dead


def _signed_in_cookie(app: Flask) -> str:
    """A signed session cookie naming a session, as a signed-in browser sends it (the secret need not exist:
    looking it up is what fails)."""
    serializer: Any = app.session_interface.get_signing_serializer(app)  # type: ignore[attr-defined]
    return str(serializer.dumps({"_user_id": f"{LOGIN_ID_PREFIX}{'x' * 43}", "_fresh": True}))


def _assert_outage_page(answer: Any) -> None:
    assert answer.status_code == 503
    assert answer.headers["Retry-After"].isdigit()
    body = answer.get_data(as_text=True)
    assert "Temporarily unavailable" in body
    assert "Traceback" not in body and "Internal Server Error" not in body


def test_a_signed_in_page_says_temporarily_unavailable(dead_app, caplog):
    dead_client = dead_app.test_client()
    dead_client.set_cookie(dead_app.config["SESSION_COOKIE_NAME"], _signed_in_cookie(dead_app))
    with caplog.at_level(logging.WARNING, logger="portal.errors"):
        answer = dead_client.get("/orgs/acme/keys/")
    _assert_outage_page(answer)
    lines = [r for r in caplog.records if r.name == "portal.errors"]
    assert len(lines) == 1 and "database unavailable" in lines[0].getMessage()
    assert lines[0].exc_info is None  # one line, no chained tracebacks


@pytest.mark.parametrize(
    ("path", "endpoint"),
    [
        ("/password/reset/{token}?next=/invite/{token}", "auth.reset_password"),
        ("/verify-email/{token}", "auth.verify_email"),
        ("/account/email/confirm/{token}", "auth.confirm_email_change"),
        ("/invite/{token}", "orgs.invitation"),
    ],
)
def test_an_outage_while_a_mailed_link_is_opened_logs_its_route_never_its_token(dead_app, caplog, path, endpoint):
    """The outage line names the route by endpoint, as the request line does: a one-time token in the path (or
    the query string) never reaches the log."""
    token = "mailed-one-time-token-Zq8vX3"
    dead_client = dead_app.test_client()
    dead_client.set_cookie(dead_app.config["SESSION_COOKIE_NAME"], _signed_in_cookie(dead_app))
    with caplog.at_level(logging.INFO, logger="portal"):
        answer = dead_client.get(path.format(token=token), headers={"X-Request-ID": "outage-7"})
    _assert_outage_page(answer)
    (line,) = [r for r in caplog.records if r.name == "portal.errors"]
    assert line.getMessage().startswith(f"database unavailable (request id outage-7, GET {endpoint}): ")
    assert token not in caplog.text
    assert all(token not in record.getMessage() for record in caplog.records)


def test_signing_in_says_the_same_instead_of_a_500(dead_app):
    answer = dead_app.test_client().post("/login", data={"email": "ada@example.com", "password": factories.PASSWORD})
    _assert_outage_page(answer)


def test_json_clients_get_a_503_error_body(dead_app):
    answer = dead_app.test_client().get("/account/", headers={"Accept": "application/json"})
    assert answer.status_code in (302, 503)  # signed out: sent to sign in without touching the database
    answer = dead_app.test_client().post("/v1/keys/revoke", json={"key": "pk_test_" + "a" * 40})
    assert answer.status_code == 503
    assert answer.get_json()["error"]["code"] == "service_unavailable"
    assert answer.headers["Retry-After"].isdigit()
