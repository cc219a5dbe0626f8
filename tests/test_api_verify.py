"""POST /v1/keys/verify: every outcome, its status code, headers and usage row (or count, for invalid keys)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from portal.extensions import db
from portal.keys import format as keyformat
from portal.keys import services as key_services
from portal.plans import PLANS
from tests import factories
from tests.api_helpers import (
    away_from_a_window_boundary,
    exhaust,
    invalid_key_counts,
    usage_count,
    usage_rows,
    verify,
)

_GOOD = "pk_test_" + "A" * 32
_SUM = keyformat.checksum(_GOOD)
BROKEN_CHECKSUM = _GOOD + _SUM[:-1] + ("0" if _SUM[-1] != "0" else "1")
RATE_HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")


def test_valid_key_is_admitted_with_its_organization_and_limit(client, org, api_key):
    response = verify(client, api_key.plaintext, endpoint="/search")
    assert response.status_code == 200
    body = response.get_json()
    assert body["valid"] is True
    assert body["key_id"] == str(api_key.api_key.id)
    assert body["organization"] == {"id": str(org.id), "slug": org.slug, "plan": "free"}
    assert body["environment"] == "test"
    limit = PLANS["free"].requests_per_minute
    assert body["ratelimit"]["limit"] == limit
    assert body["ratelimit"]["remaining"] == limit - 1
    assert 1 <= body["ratelimit"]["reset"] <= 60
    assert response.headers["RateLimit-Limit"] == str(limit)
    assert response.headers["RateLimit-Remaining"] == str(limit - 1)
    assert 1 <= int(response.headers["RateLimit-Reset"]) <= 60
    assert "Retry-After" not in response.headers
    assert response.headers["Cache-Control"] == "no-store"

    [row] = usage_rows()
    assert (row.key_id, row.organization_id, row.outcome, row.status_code, row.endpoint) == (
        api_key.api_key.id,
        org.id,
        "ok",
        200,
        "/search",
    )
    assert row.latency_ms is not None and row.latency_ms >= 0


def test_bearer_header_works_without_a_body(client, api_key):
    response = client.post("/v1/keys/verify", headers={"Authorization": f"Bearer {api_key.plaintext}"})
    assert response.status_code == 200
    assert response.get_json()["valid"] is True
    assert usage_rows()[0].endpoint is None


def test_live_key_reports_its_environment(client, org, owner):
    issued = factories.api_key(org, owner, environment="live")
    assert verify(client, issued.plaintext).get_json()["environment"] == "live"


@pytest.mark.parametrize(
    "candidate",
    [
        "pk_test_short",
        "sk_test_" + "a" * 38,
        "hello",
        BROKEN_CHECKSUM,
    ],
)
def test_malformed_keys_are_rejected_and_counted_without_a_usage_row(client, candidate):
    response = verify(client, candidate)
    assert response.status_code == 401
    assert response.get_json() == {
        "valid": False,
        "code": "malformed",
        "message": response.get_json()["message"],
    }
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert not any(h in response.headers for h in RATE_HEADERS)
    assert usage_count() == 0
    [((minute, ip, outcome), calls)] = invalid_key_counts().items()
    assert (ip, outcome, calls) == ("127.0.0.1", "malformed", 1)
    assert minute.second == minute.microsecond == 0


def test_malformed_key_needs_no_database(app, client):
    """The format check answers before any statement: with a broken backend it still says malformed."""
    verifier = app.extensions["portal.verifier"]

    class Broken:
        def verify(self, key_hash):
            raise AssertionError("the database was asked")

        def close(self):
            pass

    original, verifier.backend = verifier.backend, Broken()
    try:
        assert verify(client, "pk_live_" + "x" * 38).get_json()["code"] == "malformed"
    finally:
        verifier.backend = original


def test_well_formed_unknown_key(client):
    response = verify(client, keyformat.generate("live"))
    assert response.status_code == 401
    assert response.get_json()["code"] == "unknown"
    assert usage_count() == 0
    assert [(ip, outcome, n) for (_, ip, outcome), n in invalid_key_counts().items()] == [("127.0.0.1", "unknown", 1)]


def test_revocation_takes_effect_on_the_next_call(client, org, owner, api_key):
    assert verify(client, api_key.plaintext).status_code == 200
    key_services.revoke_key(org, api_key.api_key, owner)
    response = verify(client, api_key.plaintext)
    assert response.status_code == 401
    assert response.get_json()["code"] == "revoked"
    assert response.headers["RateLimit-Limit"] == str(PLANS["free"].requests_per_minute)
    assert [r.outcome for r in usage_rows()] == ["ok", "revoked"]
    assert usage_rows()[1].key_id == api_key.api_key.id


def test_expiry_takes_effect_on_the_next_call(client, api_key):
    assert verify(client, api_key.plaintext).status_code == 200
    api_key.api_key.expires_at = datetime.now(UTC) - timedelta(seconds=1)
    db.session.commit()
    response = verify(client, api_key.plaintext)
    assert (response.status_code, response.get_json()["code"]) == (401, "expired")


def test_key_with_future_expiry_still_works(client, org, owner):
    issued = factories.api_key(org, owner, expires_at=datetime.now(UTC) + timedelta(minutes=5))
    assert verify(client, issued.plaintext).status_code == 200


def test_rolled_key_works_during_grace_then_stops(client, org, owner, api_key):
    new = key_services.roll_key(org, api_key.api_key, timedelta(hours=1), owner)
    stops = api_key.api_key.revoked_at - datetime.now(UTC)
    assert timedelta(minutes=59) < stops <= timedelta(hours=1)  # the chosen grace, not some other length
    assert verify(client, api_key.plaintext).status_code == 200
    assert verify(client, new.plaintext).status_code == 200
    api_key.api_key.revoked_at = datetime.now(UTC) - timedelta(seconds=1)  # the grace period is over
    db.session.commit()
    assert verify(client, api_key.plaintext).get_json()["code"] == "revoked"
    assert verify(client, new.plaintext).status_code == 200


def test_roll_without_grace_stops_the_old_key_at_once(client, org, owner, api_key):
    new = key_services.roll_key(org, api_key.api_key, timedelta(0), owner)
    assert verify(client, api_key.plaintext).get_json()["code"] == "revoked"
    assert verify(client, new.plaintext).status_code == 200


def test_rate_limited_answer(client, org, api_key):
    limit = PLANS["free"].requests_per_minute
    exhaust(org.id, limit)
    response = verify(client, api_key.plaintext)
    assert response.status_code == 429
    body = response.get_json()
    assert (body["valid"], body["code"]) == (False, "rate_limited")
    assert body["ratelimit"]["remaining"] == 0
    assert response.headers["RateLimit-Limit"] == str(limit)
    assert response.headers["RateLimit-Remaining"] == "0"
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert response.headers["Retry-After"] == response.headers["RateLimit-Reset"]
    [row] = usage_rows()
    assert (row.outcome, row.status_code, row.key_id) == ("rate_limited", 429, api_key.api_key.id)


def test_limit_follows_the_plan(client, owner):
    pro = factories.org(plan="pro")
    issued = factories.api_key(pro, owner)
    response = verify(client, issued.plaintext)
    assert response.headers["RateLimit-Limit"] == str(PLANS["pro"].requests_per_minute)


def test_limit_is_per_organization(client, org, owner, api_key):
    exhaust(org.id, PLANS["free"].requests_per_minute)
    other = factories.org()
    other_key = factories.api_key(other, owner)
    assert verify(client, api_key.plaintext).status_code == 429
    assert verify(client, other_key.plaintext).status_code == 200


def test_limit_is_shared_by_the_organizations_keys(client, org, owner, api_key):
    second = factories.api_key(org, owner, name="Second")
    away_from_a_window_boundary()
    first = verify(client, api_key.plaintext).get_json()["ratelimit"]
    again = verify(client, second.plaintext).get_json()["ratelimit"]
    assert again["remaining"] == first["remaining"] - 1 == PLANS["free"].requests_per_minute - 2


def test_invalid_keys_do_not_spend_the_limit(client, org, owner, api_key):
    key_services.revoke_key(org, api_key.api_key, owner)
    for _ in range(3):
        verify(client, api_key.plaintext)
    fresh = factories.api_key(org, owner, name="Fresh")
    assert verify(client, fresh.plaintext).get_json()["ratelimit"]["remaining"] == PLANS["free"].requests_per_minute - 1


def test_last_used_at_is_set_then_not_rewritten_within_a_minute(client, api_key):
    assert api_key.api_key.last_used_at is None
    verify(client, api_key.plaintext)
    db.session.refresh(api_key.api_key)
    first = api_key.api_key.last_used_at
    assert first is not None
    verify(client, api_key.plaintext)
    db.session.refresh(api_key.api_key)
    assert api_key.api_key.last_used_at == first
    api_key.api_key.last_used_at = first - timedelta(minutes=2)
    db.session.commit()
    verify(client, api_key.plaintext)
    db.session.refresh(api_key.api_key)
    assert api_key.api_key.last_used_at > first - timedelta(minutes=2)


def test_every_answer_for_an_existing_key_is_one_usage_row_and_invalid_keys_are_counted(client, org, owner, api_key):
    revoked = factories.api_key(org, owner, name="Revoked")
    key_services.revoke_key(org, revoked.api_key, owner)
    calls = [api_key.plaintext, "nope", keyformat.generate("test"), revoked.plaintext, api_key.plaintext]
    statuses = [verify(client, key, client_ip="192.0.2.7").status_code for key in calls]
    assert statuses == [200, 401, 401, 401, 200]
    assert [r.outcome for r in usage_rows()] == ["ok", "revoked", "ok"]
    assert sorted((ip, o, n) for (_, ip, o), n in invalid_key_counts().items()) == [
        ("192.0.2.7", "malformed", 1),
        ("192.0.2.7", "unknown", 1),
    ]


def test_key_of_a_deleted_organization_is_unknown(client, org, api_key):
    db.session.delete(org)
    db.session.commit()
    assert verify(client, api_key.plaintext).get_json()["code"] == "unknown"


def test_answer_ids_are_strings(client, api_key):
    body = verify(client, api_key.plaintext).get_json()
    uuid.UUID(body["key_id"])
    uuid.UUID(body["organization"]["id"])


@pytest.mark.parametrize(
    "endpoint",
    [
        '/it\'s 100%25 "quoted"; DROP TABLE x; --',
        "\\N",
        "/a\\tb\\\\c\\n",
        "\\.",
        "{a,b}",
        "NULL",
        " ",
        "/caf%C3%A9?q=1&r=`~!@#$^*()[]|<>",
    ],
)
def test_endpoint_text_is_stored_verbatim(client, api_key, endpoint):
    assert verify(client, api_key.plaintext, endpoint=endpoint).status_code == 200
    assert usage_rows()[0].endpoint == endpoint


@pytest.mark.parametrize("endpoint", ["/café", "/ünïcødé", "/a\tb", "/a\nb", "\x7f", "", "/" * 201, "💥"])
def test_endpoint_must_be_printable_ascii(client, api_key, endpoint):
    response = verify(client, api_key.plaintext, endpoint=endpoint)
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_endpoint"
    assert usage_count() == 0 and invalid_key_counts() == {}
