"""The OpenAPI document, the docs page and the limiter's clean-up command."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from portal.extensions import db
from portal.models import RateLimitTracking


def test_openapi_document(client):
    response = client.get("/v1/openapi.json")
    assert response.status_code == 200
    doc = response.get_json()
    assert doc["openapi"].startswith("3.1")
    verify = doc["paths"]["/keys/verify"]["post"]
    assert set(verify["responses"]) == {"200", "400", "401", "403", "429", "503"}
    assert "Retry-After" in verify["responses"]["429"]["headers"]
    assert "/whoami" in doc["paths"]


def test_docs_page_renders_the_reference_without_scripts(client):
    response = client.get("/docs/api")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert "POST /v1/keys/verify" in html
    assert "RateLimit-Remaining" in html
    assert "Retry-After" in html
    assert "<script>" not in html and "<script " not in html.replace('<script src="/static/js/portal.js"', "")


def test_nav_links_to_the_docs(client, auth, owner):
    auth.login(owner)
    assert 'href="/docs/api"' in client.get("/docs/api").get_data(as_text=True)


def _window(bucket: str, minutes_ago: int) -> RateLimitTracking:
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=minutes_ago)
    return RateLimitTracking(bucket=bucket, window_start=start, count=1)


def test_prune_command_deletes_old_windows(app):
    db.session.add_all([_window("org:old", 120), _window("org:new", 0), _window("login:x", 10)])
    db.session.commit()
    result = app.test_cli_runner().invoke(args=["ratelimit", "prune", "--older-than", "60"])
    assert result.exit_code == 0, result.output
    assert "deleted 1" in result.output
    left = set(db.session.scalars(sa.select(RateLimitTracking.bucket)))
    assert left == {"org:new", "login:x"}


def test_prune_command_keeps_this_months_quota_counters(app):
    month = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    db.session.add_all(
        [
            RateLimitTracking(bucket="quota:this", window_start=month, count=9_000),
            RateLimitTracking(bucket="quota:old", window_start=month - timedelta(days=100), count=5),
        ]
    )
    db.session.commit()
    result = app.test_cli_runner().invoke(args=["ratelimit", "prune", "--older-than", "60"])
    assert result.exit_code == 0, result.output
    assert set(db.session.scalars(sa.select(RateLimitTracking.bucket))) == {"quota:this"}


def test_prune_refuses_to_cut_into_the_sign_in_window(app):
    result = app.test_cli_runner().invoke(args=["ratelimit", "prune", "--older-than", "5"])
    assert result.exit_code != 0
    assert "at least" in result.output


def test_docs_render_code_spans_and_escape_the_rest():
    from portal.docs.routes import ticks

    assert str(ticks("send `Retry-After` <b>")) == "send <code>Retry-After</code> &lt;b&gt;"
