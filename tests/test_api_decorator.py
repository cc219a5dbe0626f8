"""@require_api_key and the demo route GET /v1/whoami."""

from __future__ import annotations

from flask import g

from portal.api.decorators import require_api_key
from portal.keys import format as keyformat
from portal.keys import services as key_services
from portal.plans import PLANS
from tests.api_helpers import exhaust, invalid_key_counts, usage_count, usage_rows


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_whoami_with_a_valid_key(client, org, api_key):
    response = client.get("/v1/whoami", headers=bearer(api_key.plaintext))
    assert response.status_code == 200
    body = response.get_json()
    assert body["key_id"] == str(api_key.api_key.id)
    assert body["organization"]["slug"] == org.slug
    assert response.headers["RateLimit-Limit"] == str(PLANS["free"].requests_per_minute)
    [row] = usage_rows()
    assert (row.outcome, row.status_code, row.endpoint, row.key_id) == (
        "ok",
        200,
        "/v1/whoami",
        api_key.api_key.id,
    )


def test_whoami_without_a_key_is_401_and_not_metered(client):
    response = client.get("/v1/whoami")
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "missing_key"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert usage_count() == 0


def test_whoami_rejects_malformed_unknown_and_revoked_keys(client, org, owner, api_key):
    key_services.revoke_key(org, api_key.api_key, owner)
    for key, code in (
        ("pk_test_nope", "malformed"),
        (keyformat.generate("test"), "unknown"),
        (api_key.plaintext, "revoked"),
    ):
        response = client.get("/v1/whoami", headers=bearer(key))
        assert response.status_code == 401
        assert response.get_json()["error"]["code"] == code
    assert [r.outcome for r in usage_rows()] == ["revoked"]
    assert sorted((ip, o, n) for (_, ip, o), n in invalid_key_counts().items()) == [
        ("127.0.0.1", "malformed", 1),
        ("127.0.0.1", "unknown", 1),
    ]


def test_whoami_rate_limited(client, org, api_key):
    exhaust(org.id, PLANS["free"].requests_per_minute)
    response = client.get("/v1/whoami", headers=bearer(api_key.plaintext))
    assert response.status_code == 429
    assert response.get_json()["error"]["code"] == "rate_limited"
    assert response.headers["Retry-After"]
    assert response.headers["RateLimit-Remaining"] == "0"


def test_whoami_bad_authorization_is_400(client):
    response = client.get("/v1/whoami", headers={"Authorization": "Token abc"})
    assert response.status_code == 400
    assert usage_count() == 0


def test_decorator_protects_any_view(app, api_key):
    calls = []

    @require_api_key
    def protected() -> str:
        calls.append(g.api_key.key_id)
        return "secret"

    with app.test_request_context("/anything", headers=bearer(api_key.plaintext)):
        assert protected() == "secret"
    with app.test_request_context("/anything", headers=bearer("pk_test_wrong")):
        response = protected()
        assert response.status_code == 401
    assert calls == [str(api_key.api_key.id)]
    assert usage_count() == 1
    assert [(o, n) for (_, _, o), n in invalid_key_counts().items()] == [("malformed", 1)]
