"""Real nginx (``auth_request``) and real Caddy (``forward_auth``), configured with the blocks docs/gateways.md
shows, in front of the portal's gunicorn and a small upstream: what a client and the upstream see."""

from __future__ import annotations

import http.client
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from portal.extensions import db
from portal.keys import format as keyformat
from portal.keys import services as key_services
from portal.keys.policy import KeyPolicy
from portal.models import ApiKeyUsage, Organization
from portal.plans import PLANS
from tests import factories
from tests.api_helpers import away_from_a_window_boundary, exhaust
from tests.servers import caddy, echo_upstream, gateway_binary, gunicorn, nginx

pytestmark = pytest.mark.concurrency
GATEWAYS = {"nginx": nginx, "caddy": caddy}
IDENTITY = (
    "x-procode-organization",
    "x-procode-organization-slug",
    "x-procode-plan",
    "x-procode-key-id",
    "x-procode-environment",
    "x-procode-scopes",
)


@pytest.fixture(scope="module")
def portal(app: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The portal's gunicorn, trusting the one proxy in front of it for the client's address."""
    logs = tmp_path_factory.mktemp("portal")
    config = app.config
    with gunicorn(
        config["SQLALCHEMY_DATABASE_URI"],
        logs,
        API_KEY_PEPPER=config["API_KEY_PEPPER"],
        PORTAL_TRUST_PROXY="1",
        API_USAGE_FLUSH_INTERVAL="0.05",
    ) as base:
        yield base


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    with echo_upstream() as base:
        yield base


@pytest.fixture(scope="module", params=sorted(GATEWAYS))
def gateway(request: pytest.FixtureRequest, portal: str, upstream: str, tmp_path_factory: pytest.TempPathFactory):
    """Each gateway in turn, started from docs/gateways.md's configuration; skipped where it is not installed."""
    name = request.param
    if gateway_binary(name) is None:
        pytest.skip(f"{name} is not installed (make test installs Debian's nginx-light and caddy when run as root)")
    with GATEWAYS[name](portal, upstream, tmp_path_factory.mktemp(name)) as base:
        yield base


@pytest.fixture
def tenant(app: Any) -> Iterator[dict[str, Any]]:
    """A committed Free organization and its keys; deleted with its usage and counters afterwards."""
    org = factories.org(plan="free")
    issued = {
        "open": factories.api_key(org, None, name="open"),
        "limited": factories.api_key(org, None, name="limited", key_policy=KeyPolicy(rate_limit=2)),
        "reader": factories.api_key(org, None, name="reader", key_policy=KeyPolicy(scopes=["files:read"])),
        "fenced": factories.api_key(org, None, name="fenced", key_policy=KeyPolicy(allowed_ips=["127.0.0.2/32"])),
        "revoked": factories.api_key(org, None, name="revoked"),
    }
    key_services.revoke_key(org, issued["revoked"].api_key, None, "test")
    db.session.commit()
    data = {
        "org": org,
        "org_id": str(org.id),
        "slug": org.slug,
        "keys": {name: key.plaintext for name, key in issued.items()},
        "ids": {name: str(key.api_key.id) for name, key in issued.items()},
        "path": f"/orders/{uuid.uuid4().hex}",
    }
    yield data
    db.session.rollback()
    path = f"% {data['path']}"
    ours = sa.or_(ApiKeyUsage.organization_id == org.id, ApiKeyUsage.endpoint.like(path))
    db.session.execute(sa.delete(ApiKeyUsage).where(ours))
    db.session.execute(sa.text("DELETE FROM rate_limit_tracking WHERE organization_id = :o"), {"o": org.id})
    db.session.execute(sa.delete(Organization).where(Organization.id == org.id))
    db.session.commit()


class Answer:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    @property
    def upstream(self) -> dict[str, Any] | None:
        """What the upstream received (method, path, headers with lower-case names), or None if not reached."""
        try:
            seen = json.loads(self.body)
        except ValueError:
            return None
        if not isinstance(seen, dict) or "headers" not in seen:
            return None
        seen["headers"] = {name.lower(): value for name, value in seen["headers"].items()}
        return seen


def call(
    base: str,
    path: str,
    key: str | None = None,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    source: str = "127.0.0.1",
) -> Answer:
    """One client call through the gateway, from the loopback address ``source``."""
    sent = {"User-Agent": "shop-frontend/3.1", **(headers or {})}
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    host, port = base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60, source_address=(source, 0))
    try:
        connection.request(method, path, body=b"{}" if method == "POST" else None, headers=sent)
        response = connection.getresponse()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        connection.close()


def metered(path: str, count: int) -> list[tuple[str | None, str]]:
    """The usage rows (endpoint, outcome) of calls to ``path``, sorted, once the workers have flushed ``count`` of
    them (unknown keys have no organization, so rows are found by their endpoint: each test has a path of its
    own). Sorted: each gunicorn worker writes its own rows, so their ids do not follow the calls' order."""
    deadline = time.monotonic() + 30
    while True:
        db.session.rollback()
        rows = db.session.execute(
            sa.select(ApiKeyUsage.endpoint, ApiKeyUsage.outcome)
            .where(ApiKeyUsage.endpoint.like(f"% {path}"))
            .order_by(ApiKeyUsage.id)
        ).all()
        if len(rows) >= count or time.monotonic() > deadline:
            return sorted((endpoint, outcome) for endpoint, outcome in rows)
        time.sleep(0.05)


def test_a_valid_key_reaches_the_upstream_with_its_identity(gateway, tenant):
    forged = {"X-ProCode-Organization": "someone-else", "X-ProCode-Scopes": "*", "X-ProCode-Key-Id": "forged"}
    answer = call(gateway, f"{tenant['path']}?page=2", tenant["keys"]["reader"], headers=forged)
    assert answer.status == 200
    seen = answer.upstream
    assert seen is not None and seen["path"] == f"{tenant['path']}?page=2"
    assert {name: seen["headers"].get(name) for name in IDENTITY} == {
        "x-procode-organization": tenant["org_id"],
        "x-procode-organization-slug": tenant["slug"],
        "x-procode-plan": "free",
        "x-procode-key-id": tenant["ids"]["reader"],
        "x-procode-environment": "test",
        "x-procode-scopes": "files:read",
    }
    with_header = call(gateway, tenant["path"], method="POST", headers={"X-API-Key": tenant["keys"]["open"]})
    assert with_header.status == 200
    assert with_header.upstream is not None
    assert with_header.upstream["method"] == "POST"
    assert with_header.upstream["headers"]["x-procode-key-id"] == tenant["ids"]["open"]
    assert with_header.upstream["headers"]["x-procode-scopes"] == "*"
    assert metered(tenant["path"], 2) == [(f"GET {tenant['path']}", "ok"), (f"POST {tenant['path']}", "ok")]


def test_unknown_revoked_and_missing_keys_are_401(gateway, tenant):
    unknown = call(gateway, tenant["path"], keyformat.generate("test"))
    revoked = call(gateway, tenant["path"], tenant["keys"]["revoked"])
    missing = call(gateway, tenant["path"])
    basic_only = call(gateway, tenant["path"], headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert [a.status for a in (unknown, revoked, missing, basic_only)] == [401, 401, 401, 401]
    assert all(a.upstream is None for a in (unknown, revoked, missing, basic_only))
    assert missing.headers["www-authenticate"] == 'Bearer realm="procode"'
    assert revoked.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
    # A known key's call is metered under the original call; an unknown key is only counted per client address
    # and minute (api_invalid_key_counts), and a call without a key not at all.
    assert metered(tenant["path"], 1) == [(f"GET {tenant['path']}", "revoked")]


def test_over_the_keys_or_the_organizations_limit_is_429_with_retry_after(gateway, tenant):
    away_from_a_window_boundary(margin=10)
    limited = [call(gateway, tenant["path"], tenant["keys"]["limited"]) for _ in range(3)]
    assert [a.status for a in limited] == [200, 200, 429]
    assert limited[2].upstream is None
    assert int(limited[2].headers["retry-after"]) >= 1
    exhaust(tenant["org"].id, PLANS["free"].requests_per_minute)
    over = call(gateway, tenant["path"], tenant["keys"]["open"])
    assert over.status == 429 and over.upstream is None
    assert int(over.headers["retry-after"]) >= 1
    assert over.headers["ratelimit-limit"] == str(PLANS["free"].requests_per_minute)
    outcomes = ("ok", "ok", "rate_limited", "rate_limited")  # sorted
    assert metered(tenant["path"], 4) == [(f"GET {tenant['path']}", outcome) for outcome in outcomes]


def test_the_original_call_and_the_clients_address_count(gateway, tenant):
    """The usage row holds the client's method and path (no query string); the key's allowlist sees the client's
    address, not the gateway's, and a refused address is a 403 at the client."""
    path = tenant["path"]
    assert call(gateway, f"{path}?token=secret", tenant["keys"]["open"], method="DELETE").status == 200
    assert call(gateway, path, tenant["keys"]["fenced"], source="127.0.0.2").status == 200
    refused = call(gateway, path, tenant["keys"]["fenced"], source="127.0.0.3")
    assert refused.status == 403 and refused.upstream is None
    assert call(gateway, path, tenant["keys"]["fenced"]).status == 403  # the gateway's own address is no pass
    assert metered(path, 4) == [
        (f"DELETE {path}", "ok"),
        (f"GET {path}", "forbidden"),
        (f"GET {path}", "forbidden"),
        (f"GET {path}", "ok"),
    ]
    clients = db.session.execute(
        sa.select(sa.func.host(ApiKeyUsage.client_ip), ApiKeyUsage.user_agent).where(
            ApiKeyUsage.endpoint == f"GET {path}", ApiKeyUsage.outcome == "ok"
        )
    ).all()
    assert [ip for ip, _ in clients] == ["127.0.0.2"]  # the key page lists the client, not the gateway
    assert clients[0][1] == "shop-frontend/3.1"  # and the client's own User-Agent, forwarded by the gateway
