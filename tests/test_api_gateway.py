"""A gateway's call, /v1/keys/verify/gateway (docs/gateways.md): headers only, 401 without a key, the key's
identity in headers, the original request metered. The real nginx and Caddy are in tests/test_gateways.py."""

from __future__ import annotations

from typing import Any

import pytest

from portal.api.answer import IDENTITY_HEADERS
from portal.api.inputs import header_variable
from portal.keys import format as keyformat
from portal.keys import services as key_services
from portal.keys.policy import KeyPolicy
from portal.plans import PLANS
from tests import factories
from tests.api_helpers import exhaust, invalid_key_calls, usage_count, usage_rows

GATEWAY = "/v1/keys/verify/gateway"


def gateway(client: Any, key: str | None = None, method: str = "GET", **headers: str) -> Any:
    """A call as Caddy makes it: the client's headers, X-Forwarded-Method and -Uri, no body."""
    sent = {"X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/orders/7?page=2", **headers}
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    return client.open(GATEWAY, method=method, headers=sent)


def test_valid_key_answers_200_with_its_identity_and_meters_the_original_call(client, org, api_key):
    response = gateway(client, api_key.plaintext)
    assert response.status_code == 200
    assert response.headers["X-ProCode-Organization"] == str(org.id)
    assert response.headers["X-ProCode-Organization-Slug"] == org.slug
    assert response.headers["X-ProCode-Plan"] == "free"
    assert response.headers["X-ProCode-Key-Id"] == str(api_key.api_key.id)
    assert response.headers["X-ProCode-Environment"] == "test"
    assert response.headers["X-ProCode-Scopes"] == "*"
    assert response.headers["RateLimit-Limit"] == str(PLANS["free"].requests_per_minute)
    assert response.get_json()["valid"] is True
    [row] = usage_rows()
    assert (row.endpoint, row.outcome, row.key_id) == ("GET /orders/7", "ok", api_key.api_key.id)


def test_a_scoped_key_names_its_scopes(client, org, owner):
    issued = factories.api_key(org, owner, key_policy=KeyPolicy(scopes=["files:read", "files:write"]))
    assert gateway(client, issued.plaintext).headers["X-ProCode-Scopes"] == "files:read files:write"


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST"])
def test_every_method_a_gateway_uses_is_accepted(client, api_key, method):
    response = gateway(client, api_key.plaintext, method=method)
    assert response.status_code == 200
    assert response.headers["X-ProCode-Key-Id"] == str(api_key.api_key.id)
    assert (response.data == b"") == (method == "HEAD")


def test_other_methods_are_405(client, api_key):
    response = gateway(client, api_key.plaintext, method="PUT")
    assert response.status_code == 405
    assert set(response.headers["Allow"].split(", ")) >= {"GET", "HEAD", "POST"}


def test_the_configured_header_carries_the_key_too(client, api_key):
    response = gateway(client, **{"X-API-Key": api_key.plaintext, "Authorization": "Basic dXNlcjpwYXNz"})
    assert response.status_code == 200
    assert response.headers["X-ProCode-Key-Id"] == str(api_key.api_key.id)


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer "}, {"X-API-Key": " "}],
)
def test_a_call_without_a_key_is_401_with_a_bearer_challenge_and_not_metered(client, headers):
    response = gateway(client, **headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="procode"'
    assert response.get_json()["error"]["code"] == "missing_key"
    assert not any(name in response.headers for name in IDENTITY_HEADERS)
    assert usage_count() == 0


def test_two_different_keys_are_refused(client, api_key):
    response = gateway(client, api_key.plaintext, **{"X-API-Key": keyformat.generate("test")})
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "conflicting_keys"
    assert "X-ProCode-Key-Id" not in response.headers
    assert gateway(client, api_key.plaintext, **{"X-API-Key": api_key.plaintext}).status_code == 200


def test_unknown_malformed_and_revoked_keys_are_401_and_counted(client, org, owner, api_key):
    key_services.revoke_key(org, api_key.api_key, owner)
    before = (invalid_key_calls("unknown"), invalid_key_calls("malformed"))
    answers = [gateway(client, key) for key in (keyformat.generate("test"), "pk_test_nope", api_key.plaintext)]
    assert [a.status_code for a in answers] == [401, 401, 401]
    assert [a.get_json()["code"] for a in answers] == ["unknown", "malformed", "revoked"]
    assert all(not any(name in a.headers for name in IDENTITY_HEADERS) for a in answers)
    assert [(r.outcome, r.endpoint) for r in usage_rows()] == [("revoked", "GET /orders/7")]
    after = (invalid_key_calls("unknown"), invalid_key_calls("malformed"))
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1)  # counted, not rows


def test_over_the_limit_is_429_with_retry_after(client, org, api_key):
    exhaust(org.id, PLANS["free"].requests_per_minute)
    response = gateway(client, api_key.plaintext)
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) >= 1
    assert response.headers["RateLimit-Remaining"] == "0"
    assert "X-ProCode-Key-Id" not in response.headers
    assert usage_rows()[0].outcome == "rate_limited"


def test_the_gateway_may_ask_for_a_scope(client, org, owner):
    reader = factories.api_key(org, owner, key_policy=KeyPolicy(scopes=["files:read"])).plaintext
    assert client.get(f"{GATEWAY}?scope=files:read", headers={"Authorization": f"Bearer {reader}"}).status_code == 200
    refused = client.get(f"{GATEWAY}?scope=files:write", headers={"Authorization": f"Bearer {reader}"})
    assert refused.status_code == 403 and refused.get_json()["code"] == "insufficient_scope"
    misconfigured = client.get(f"{GATEWAY}?scope=files:nope", headers={"Authorization": f"Bearer {reader}"})
    assert misconfigured.status_code == 400 and misconfigured.get_json()["error"]["code"] == "invalid_scope"


@pytest.mark.parametrize(
    ("headers", "endpoint"),
    [
        ({"X-Forwarded-Uri": "/a/b?token=secret#x", "X-Forwarded-Method": "delete"}, "DELETE /a/b"),
        ({"X-Original-URI": "/nginx/style?q=1", "X-Original-Method": "PATCH"}, "PATCH /nginx/style"),
        ({"X-Forwarded-Uri": "/only-path"}, "/only-path"),
        ({"X-Forwarded-Uri": "http://api.example/abs?x=1", "X-Forwarded-Method": "GET"}, "GET /abs"),
        ({"X-Forwarded-Uri": "/caf\u00e9 x", "X-Forwarded-Method": "GET"}, "GET /caf%E9%20x"),
        ({"X-Forwarded-Uri": "/" + "x" * 300, "X-Forwarded-Method": "GET"}, "GET /" + "x" * 195),
        ({"X-Forwarded-Method": "GET"}, None),
    ],
)
def test_the_metered_endpoint_is_the_original_path(client, api_key, headers, endpoint):
    sent = {"Authorization": f"Bearer {api_key.plaintext}", **headers}
    assert client.get(GATEWAY, headers=sent).status_code == 200
    assert usage_rows()[0].endpoint == endpoint


def test_the_client_address_is_the_trusted_forwarded_one(app, client, org, owner):
    """Behind PORTAL_TRUST_PROXY the fast path reads X-Forwarded-For as ProxyFix would; without it, the peer."""
    fenced = factories.api_key(org, owner, key_policy=KeyPolicy(allowed_ips=["10.0.0.0/8"])).plaintext
    fast_path = app.extensions["portal.verify_fast_path"]
    from_inside = {"REMOTE_ADDR": "10.1.2.3"}
    assert gateway(client, fenced).status_code == 403  # the test client's peer, 127.0.0.1
    assert (
        client.get(GATEWAY, headers={"Authorization": f"Bearer {fenced}"}, environ_base=from_inside).status_code == 200
    )
    forwarded = {"Authorization": f"Bearer {fenced}", "X-Forwarded-For": "192.0.2.9, 10.9.9.9"}
    assert client.get(GATEWAY, headers=forwarded).status_code == 403  # not trusted: the peer counts
    fast_path.trust_proxy = True
    try:
        assert client.get(GATEWAY, headers=forwarded).status_code == 200  # the last hop's entry
        spoofed = {**forwarded, "X-Forwarded-For": "10.9.9.9, 192.0.2.9"}
        assert client.get(GATEWAY, headers=spoofed).status_code == 403
        junk = {**forwarded, "X-Forwarded-For": "not-an-ip"}
        assert client.get(GATEWAY, headers=junk, environ_base=from_inside).status_code == 200  # the peer
    finally:
        fast_path.trust_proxy = False


def test_post_json_verification_is_unchanged(client, api_key):
    """The body-less bearer call to /v1/keys/verify stays what existing clients know: 400 without a key."""
    assert client.post("/v1/keys/verify").status_code == 400
    response = client.post("/v1/keys/verify", headers={"Authorization": f"Bearer {api_key.plaintext}"})
    assert response.status_code == 200 and "X-ProCode-Key-Id" not in response.headers


def _answers(client: Any, key: str) -> list[tuple[int, dict[str, str | None], Any]]:
    names = (*IDENTITY_HEADERS, "WWW-Authenticate", "Content-Type", "Cache-Control", "RateLimit-Limit", "Allow")
    calls = [
        gateway(client, key),
        gateway(client, key, method="HEAD"),
        gateway(client, key, method="POST"),
        gateway(client),
        gateway(client, keyformat.generate("test")),
        gateway(client, key, **{"X-API-Key": "pk_test_other"}),
        client.get(f"{GATEWAY}?scope=nope", headers={"Authorization": f"Bearer {key}"}),
    ]
    result = []
    for response in calls:
        headers = {name: response.headers.get(name) for name in names}
        headers["X-ProCode-Key-Id"] = headers["X-ProCode-Key-Id"] and "set"
        headers["X-ProCode-Organization"] = headers["X-ProCode-Organization"] and "set"
        headers["X-ProCode-Organization-Slug"] = headers["X-ProCode-Organization-Slug"] and "set"
        body = response.get_json(silent=True)
        if isinstance(body, dict) and body.get("valid"):
            body = "valid"
        result.append((response.status_code, headers, body))
    return result


def test_fast_path_answers_like_the_flask_view(app, client, org, owner, api_key):
    fast = _answers(client, api_key.plaintext)
    other = factories.org()
    fast_path = app.extensions["portal.verify_fast_path"]
    fast_path.enabled = False
    try:
        slow = _answers(client, factories.api_key(other, owner).plaintext)
    finally:
        fast_path.enabled = True
    assert [status for status, _, _ in fast] == [200, 200, 200, 401, 401, 401, 400]
    assert fast == slow


def test_the_key_header_can_be_renamed_or_turned_off(app, client, api_key):
    fast_path = app.extensions["portal.verify_fast_path"]
    saved = (app.config["API_KEY_HEADER"], fast_path.key_header, fast_path.key_variable)
    statuses = []
    try:
        for header in ("X-Gateway-Key", ""):
            app.config["API_KEY_HEADER"] = header
            fast_path.key_header, fast_path.key_variable = header or None, header_variable(header)
            for enabled in (True, False):
                fast_path.enabled = enabled
                statuses.append(
                    (
                        gateway(client, **{"X-Gateway-Key": api_key.plaintext}).status_code,
                        gateway(client, **{"X-API-Key": api_key.plaintext}).status_code,
                        gateway(client, api_key.plaintext).status_code,
                    )
                )
    finally:
        app.config["API_KEY_HEADER"], fast_path.key_header, fast_path.key_variable = saved
        fast_path.enabled = True
    assert statuses == [(200, 401, 200), (200, 401, 200), (401, 401, 200), (401, 401, 200)]


@pytest.mark.parametrize("header", ["X API", "Authorization", "X-Kéy", "X_Key"])
def test_a_key_header_that_is_no_header_name_is_refused_at_start(header):
    from portal.config import Config, ConfigError

    settings = {"SECRET_KEY": "s" * 32, "API_KEY_PEPPER": "p" * 32, "REMEMBER_COOKIE_DURATION": 1}
    with pytest.raises(ConfigError, match="API_KEY_HEADER"):
        Config.validate({**settings, "REMEMBER_MAX_AGE": 1, "API_KEY_HEADER": header})
    Config.validate({**settings, "REMEMBER_MAX_AGE": 1, "API_KEY_HEADER": "X-API-Key"})
