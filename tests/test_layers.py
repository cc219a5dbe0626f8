"""Below the web layer: helpers that answer without a Flask request, and raise no HTTP errors."""

from __future__ import annotations

import uuid

import pytest
from werkzeug.exceptions import NotFound

from portal import audit
from portal.db import get_org_scoped
from portal.extensions import db
from portal.http import get_org_scoped_or_404
from portal.models import ApiKey
from tests import factories


def test_org_scoped_lookup_finds_only_the_organizations_own_rows(org, owner):
    key = factories.api_key(org, owner).api_key
    other = factories.org()
    assert get_org_scoped(ApiKey, org.id, key.id) is key
    assert get_org_scoped(ApiKey, org.id, str(key.id)) is key
    assert get_org_scoped(ApiKey, other.id, key.id) is None
    assert get_org_scoped(ApiKey, org.id, "not-a-uuid") is None
    assert get_org_scoped(ApiKey, org.id, uuid.uuid4()) is None


def test_the_404_helper_lives_with_the_http_helpers(app, org, owner):
    key = factories.api_key(org, owner).api_key
    with app.test_request_context():
        assert get_org_scoped_or_404(ApiKey, org.id, key.id) is key
        with pytest.raises(NotFound):
            get_org_scoped_or_404(ApiKey, factories.org().id, key.id)


def test_audit_records_the_address_it_is_given_outside_any_request(org, owner):
    event = audit.record("org.renamed", organization_id=org.id, actor=owner, ip="198.51.100.7")
    db.session.flush()
    assert str(event.ip) == "198.51.100.7"
    assert audit.record("org.renamed", organization_id=org.id, actor=None).ip is None


def test_json_errors_share_one_body():
    from portal.errors import error_body

    assert error_body("not_found", "No such key.") == {"error": {"code": "not_found", "message": "No such key."}}


def test_request_ids_are_kept_trimmed_or_made_up():
    from portal.security_headers import MAX_REQUEST_ID_LENGTH, request_id

    assert request_id("abc") == "abc"
    assert request_id("Trace-1.a_B") == "Trace-1.a_B"
    assert request_id("x" * 500) == "x" * MAX_REQUEST_ID_LENGTH
    assert len(request_id(None)) == 32 and request_id("") != request_id("")


@pytest.mark.parametrize(
    "forged",
    [
        "abc def",
        "abc] ERROR [x",
        "abc\n2026-01-01 00:00:00,000 INFO [x] portal.auth: signed in",
        "abc\r",
        'abc"',
        "abc/../x",
        "ab\x00c",
        "ab\u00e9c",  # letters, but not ASCII ones
        "abc\u2028x",
    ],
)
def test_a_request_id_with_anything_but_letters_digits_dot_dash_underscore_is_replaced(forged):
    """The caller's id goes into every log line of its request: one that could forge a field or a line (text
    logs are ``time LEVEL [request id] logger: message``) is not taken, a fresh one is made instead."""
    from portal.security_headers import request_id

    given = request_id(forged)
    assert given != forged and len(given) == 32 and given.isalnum()


def test_a_logged_path_keeps_only_the_routes_own_words(app):
    from portal.logs import REDACTED, redacted_path, route_words

    words = route_words(app)
    assert {"password", "reset", "invite", "verify-email", "v1", "keys", "verify", "orgs"} <= words
    assert not any("<" in word or ">" in word for word in words)
    token = "q4N9x-TokenOfTheMailedLink_0123456789abcdef"
    cases = {
        f"/password/reset/{token}": "/password/reset/…",
        f"/password/reset/{token}?next=/invite/{token}": "/password/reset/…",
        f"/invite/{token}": "/invite/…",
        f"/verify-email/{token}#{token}": "/verify-email/…",
        f"/account/email/confirm/{token}": "/account/email/confirm/…",
        f"//invite/{token}/": "//invite/…/",
        f"/%69nvite/{token}": "/…/…",  # what werkzeug would decode to /invite/<token>: unknown words are dropped too
        f"/orgs/acme/keys/{token}/revoke": "/orgs/…/keys/…/revoke",
        "/v1/keys/verify": "/v1/keys/verify",
        "/login": "/login",
        "/a b\nINFO": "/…",
        "*": "…",
    }
    for path, logged in cases.items():
        assert redacted_path(path, words) == logged, path
    assert REDACTED == "…"
    # Without the app's words (an app that is not Flask), nothing but the slashes is kept.
    assert redacted_path(f"/invite/{token}") == "/…/…"
    assert route_words(object()) == frozenset()


def test_every_answer_carries_the_shared_security_headers(client):
    from portal.security_headers import SECURITY_HEADERS

    response = client.get("/login", headers={"X-Request-ID": "trace-1"})
    assert response.headers["X-Request-ID"] == "trace-1"
    for name, value in SECURITY_HEADERS:
        assert response.headers[name] == value
