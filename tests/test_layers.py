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
    assert request_id("x" * 500) == "x" * MAX_REQUEST_ID_LENGTH
    assert len(request_id(None)) == 32 and request_id("") != request_id("")


def test_every_answer_carries_the_shared_security_headers(client):
    from portal.security_headers import SECURITY_HEADERS

    response = client.get("/login", headers={"X-Request-ID": "trace-1"})
    assert response.headers["X-Request-ID"] == "trace-1"
    for name, value in SECURITY_HEADERS:
        assert response.headers[name] == value
