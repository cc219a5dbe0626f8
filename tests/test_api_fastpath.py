"""The WSGI fast path and the Flask view answer POST /v1/keys/verify identically."""

from __future__ import annotations

from portal.plans import PLANS
from tests import factories
from tests.api_helpers import exhaust, invalid_key_calls, usage_count

HEADERS = (
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "Retry-After",
    "WWW-Authenticate",
    "Cache-Control",
    "X-Content-Type-Options",
    "X-Frame-Options",
    "Referrer-Policy",
    "Content-Type",
)


def answers(client, api_key, org) -> list[tuple[int, object, dict[str, str | None]]]:
    requests = [
        {"json": {"key": api_key.plaintext, "endpoint": "/x"}},
        {"json": {"key": "pk_test_nope"}},
        {"data": "nope", "content_type": "text/plain"},
        {"json": {"key": 5}},
        {"data": "{" * 20_000, "content_type": "application/json"},
    ]
    result = []
    for kwargs in requests:
        response = client.post("/v1/keys/verify", **kwargs)
        body = response.get_json()
        if isinstance(body, dict) and "ratelimit" in body:
            body["ratelimit"].pop("reset")
        result.append((response.status_code, body, {h: response.headers.get(h) for h in HEADERS}))
    exhaust(org.id, PLANS["free"].requests_per_minute)
    limited = client.post("/v1/keys/verify", json={"key": api_key.plaintext})
    result.append(
        (
            limited.status_code,
            limited.get_json()["code"],
            {"Retry-After": limited.headers.get("Retry-After") and "set"},
        )
    )
    return result


def test_fast_path_answers_like_the_flask_view(client, org, owner, api_key, app):
    malformed = invalid_key_calls("malformed")  # counts other tests' real servers committed stay in the table
    fast = answers(client, api_key, org)
    rows_fast = usage_count()
    other = factories.org()
    fast_path = app.extensions["portal.verify_fast_path"]
    fast_path.enabled = False
    try:
        slow = answers(client, factories.api_key(other, owner), other)
    finally:
        fast_path.enabled = True
    assert [status for status, _, _ in fast] == [200, 401, 400, 400, 400, 429]
    assert fast[1:] == slow[1:]
    assert fast[0][0] == slow[0][0] and fast[0][2] == slow[0][2]
    assert usage_count() == 2 * rows_fast == 4
    assert invalid_key_calls("malformed") - malformed == 2


def test_fast_path_sets_a_request_id(client):
    response = client.post("/v1/keys/verify", json={"key": "pk_test_x"}, headers={"X-Request-ID": "abc"})
    assert response.headers["X-Request-ID"] == "abc"
    assert len(client.post("/v1/keys/verify", json={"key": "pk_test_x"}).headers["X-Request-ID"]) == 32


def test_other_routes_still_go_through_flask(client):
    assert client.get("/v1/openapi.json").status_code == 200
    assert client.get("/v1/keys/verify").status_code == 405
