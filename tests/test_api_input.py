"""Requests that are not verifications: 400 with a JSON error, never a 500, never a usage row."""

from __future__ import annotations

import json

import pytest

from tests.api_helpers import invalid_key_calls, usage_count

URL = "/v1/keys/verify"
KEY = "pk_test_" + "A" * 38


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({}, "missing_key"),
        ({"json": {}}, "missing_key"),
        ({"json": {"endpoint": "/x"}}, "missing_key"),
        ({"json": {"key": None}}, "missing_key"),
        ({"data": "not json", "content_type": "application/json"}, "invalid_json"),
        ({"data": '{"key": ', "content_type": "application/json"}, "invalid_json"),
        ({"data": b"\xff\xfe\x00garbage", "content_type": "application/json"}, "invalid_json"),
        ({"data": "[" * 5000 + "]" * 5000, "content_type": "application/json"}, "invalid_json"),
        ({"json": ["pk_test_x"]}, "invalid_json"),
        ({"json": "pk_test_x"}, "invalid_json"),
        ({"data": json.dumps({"key": KEY}), "content_type": "text/plain"}, "unsupported_content_type"),
        ({"data": {"key": KEY}}, "unsupported_content_type"),  # a form post
        ({"json": {"key": 123}}, "invalid_key"),
        ({"json": {"key": ["pk"]}}, "invalid_key"),
        ({"json": {"key": {"a": 1}}}, "invalid_key"),
        ({"json": {"key": True}}, "invalid_key"),
        ({"json": {"key": ""}}, "invalid_key"),
        ({"json": {"key": "x" * 257}}, "invalid_key"),
        ({"json": {"key": "pk_test_ünïcødé💥" + "a" * 20}}, "invalid_key"),
        ({"json": {"key": "pk_test_\x00" + "a" * 37}}, "invalid_key"),
        ({"data": '{"key": "\\ud800\\udfff\\ud800"}', "content_type": "application/json"}, "invalid_key"),
        ({"json": {"key": "pk live with spaces"}}, "invalid_key"),
        (
            {"data": json.dumps({"key": "k" * 1_000_000}), "content_type": "application/json"},
            "body_too_large",
        ),
        ({"json": {"key": KEY, "endpoint": 5}}, "invalid_endpoint"),
        ({"json": {"key": KEY, "endpoint": "/" + "e" * 300}}, "invalid_endpoint"),
        ({"json": {"key": KEY, "endpoint": "/\x00"}}, "invalid_endpoint"),
        ({"json": {"key": KEY, "endpoint": "/\ud800"}}, "invalid_endpoint"),
        ({"headers": {"Authorization": "Basic dXNlcjpwYXNz"}}, "unsupported_authorization"),
        ({"headers": {"Authorization": "Bearer"}}, "invalid_key"),
        ({"headers": {"Authorization": "Bearer " + "x" * 5000}}, "invalid_key"),
        ({"json": {"key": KEY}, "headers": {"Authorization": "Bearer pk_test_other"}}, "conflicting_keys"),
    ],
)
def test_bad_requests_are_400_without_a_usage_row(client, kwargs, code):
    response = client.post(URL, **kwargs)
    assert response.status_code == 400, response.get_data(as_text=True)
    body = response.get_json()
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    assert response.headers["Cache-Control"] == "no-store"
    assert usage_count() == 0 and invalid_key_calls() == 0


def test_same_key_in_body_and_header_is_fine(client):
    response = client.post(URL, json={"key": KEY}, headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 401
    assert invalid_key_calls("malformed") == 1


def test_json_with_charset_is_accepted(client):
    response = client.post(URL, data=json.dumps({"key": KEY}), content_type="application/json; charset=utf-8")
    assert response.get_json()["code"] == "malformed"


def test_wrong_method_is_a_json_405(client):
    response = client.get(URL)
    assert response.status_code == 405
    assert response.get_json()["error"]["code"] == "method_not_allowed"
    assert usage_count() == 0


def test_unknown_v1_route_is_a_json_404(client):
    response = client.post("/v1/nothing-here", json={})
    assert response.status_code == 404
    assert "error" in response.get_json()


def test_no_session_cookie_and_no_csrf(client):
    response = client.post(URL, json={"key": KEY})
    assert response.status_code == 401  # CSRF never asked, though the app enforces it elsewhere
    assert "Set-Cookie" not in response.headers


def test_csrf_does_not_apply_to_the_api(csrf_app):
    response = csrf_app.test_client().post(URL, json={"key": KEY})
    assert response.status_code == 401
    assert response.get_json()["code"] == "malformed"


def test_chunked_body_is_read_and_bounded(client):
    import io

    small = client.post(
        URL, input_stream=io.BytesIO(json.dumps({"key": KEY}).encode()), content_type="application/json"
    )
    assert small.get_json()["code"] == "malformed"
    huge = client.post(
        URL, input_stream=io.BytesIO(b'{"key": "' + b"k" * 1_000_000 + b'"}'), content_type="application/json"
    )
    assert huge.status_code == 400
    assert huge.get_json()["error"]["code"] == "body_too_large"
    assert invalid_key_calls() == 1


def test_content_length_that_is_not_a_number(client):
    response = client.post(URL, data=b"{}", content_type="application/json", headers={"Content-Length": "abc"})
    assert response.status_code == 400
    assert usage_count() == 0


def test_a_wrong_method_names_the_allowed_ones(client):
    as_json = client.get("/v1/keys/verify")
    assert as_json.status_code == 405 and as_json.get_json()["error"]["code"] == "method_not_allowed"
    assert "POST" in as_json.headers["Allow"]
    as_page = client.post("/docs/api")
    assert as_page.status_code == 405 and "GET" in as_page.headers["Allow"]
