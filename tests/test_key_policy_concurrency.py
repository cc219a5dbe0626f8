"""Key policy under concurrency, on committed data with the production engine (grouped statements, several
connections) and through a real gunicorn: a per-key limit, the organization's limit across keys, and the Free
plan's monthly quota stay exact, and a call refused by one bucket spends nothing in the others."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import sqlalchemy as sa

from portal.extensions import db
from portal.keys.policy import KeyPolicy
from portal.models import ApiKeyUsage, Organization
from portal.plans import PLANS
from tests import factories
from tests.servers import gunicorn
from tests.test_api_concurrency import make_verifier

pytestmark = pytest.mark.concurrency
FREE = PLANS["free"].requests_per_minute


@pytest.fixture
def policy_org(app: Any) -> Iterator[dict[str, Any]]:
    """A committed Free organization with a key limited to 7/min, a full-access key, a key restricted to
    files:read and a key allowed only from 10.0.0.0/8; deleted with its usage and counters afterwards."""
    org = factories.org(plan="free")
    keys = {
        "limited": factories.api_key(org, None, name="limited", key_policy=KeyPolicy(rate_limit=7)).plaintext,
        "open": factories.api_key(org, None, name="open").plaintext,
        "reader": factories.api_key(org, None, name="reader", key_policy=KeyPolicy(scopes=["files:read"])).plaintext,
        "fenced": factories.api_key(
            org, None, name="fenced", key_policy=KeyPolicy(allowed_ips=["10.0.0.0/8"])
        ).plaintext,
    }
    data = {
        "org_id": org.id,
        "keys": keys,
        "tag": f"/policy/{uuid.uuid4().hex}",
        "url": app.config["SQLALCHEMY_DATABASE_URI"],
        "pepper": app.config["API_KEY_PEPPER"],
    }
    yield data
    db.session.rollback()
    db.session.execute(sa.delete(ApiKeyUsage).where(ApiKeyUsage.organization_id == org.id))
    db.session.execute(sa.text("DELETE FROM rate_limit_tracking WHERE organization_id = :o"), {"o": org.id})
    db.session.execute(sa.delete(Organization).where(Organization.id == org.id))
    db.session.commit()


def windows(org_id: uuid.UUID, tag: str) -> list[dict[str, int]]:
    """Per minute: admitted calls per key name, and calls per outcome."""
    db.session.rollback()
    rows = db.session.execute(
        sa.text(
            """
        SELECT date_trunc('minute', u.occurred_at) AS m, k.name, u.outcome, count(*)
        FROM api_key_usage u JOIN api_keys k ON k.id = u.key_id
        WHERE u.organization_id = :org AND u.endpoint = :tag GROUP BY 1, 2, 3
        """
        ),
        {"org": org_id, "tag": tag},
    ).all()
    by_minute: dict[Any, Counter[str]] = {}
    for minute, name, outcome, n in rows:
        by_minute.setdefault(minute, Counter())[f"{name}:{outcome}"] += int(n)
    return [dict(c) for _, c in sorted(by_minute.items())]


def test_a_key_limit_below_the_organizations_is_exact_with_many_threads(policy_org):
    """16 threads, all on the key limited to 7/min: exactly 7 admitted per minute, and the refused calls did not
    spend the organization's budget (the open key still gets the rest of the organization's limit)."""
    verifier = make_verifier(policy_org["url"], policy_org["pepper"])
    keys, tag = policy_org["keys"], policy_org["tag"]

    def one(i: int) -> str:
        return verifier.verify(keys["limited"], tag).outcome

    with ThreadPoolExecutor(max_workers=16) as pool:
        outcomes = list(pool.map(one, range(16 * 12)))
    with ThreadPoolExecutor(max_workers=16) as pool:
        open_outcomes = list(pool.map(lambda i: verifier.verify(keys["open"], tag).outcome, range(FREE)))
    verifier.close()
    assert set(outcomes) == {"ok", "rate_limited"}
    per_minute = windows(policy_org["org_id"], tag)
    for w in per_minute:
        limited_ok = w.get("limited:ok", 0)
        limited_calls = limited_ok + w.get("limited:rate_limited", 0)
        assert limited_ok == min(7, limited_calls)
        open_ok = w.get("open:ok", 0)
        open_calls = open_ok + w.get("open:rate_limited", 0)
        assert open_ok == min(FREE - limited_ok, open_calls)  # the org's limit, less only what was admitted
    if len(per_minute) == 1:
        assert outcomes.count("ok") == 7 and open_outcomes.count("ok") == FREE - 7


def test_two_keys_share_the_organizations_limit_exactly(policy_org):
    """Two keys (one with a key limit above the share it gets) under 16 threads: the organization's limit binds
    and admits exactly min(limit, calls) per minute; scope- and address-refused calls in the same groups
    spend nothing."""
    verifier = make_verifier(policy_org["url"], policy_org["pepper"])
    keys, tag = policy_org["keys"], policy_org["tag"]
    calls = [
        (keys["open"], None, None),
        (keys["reader"], "files:read", None),
        (keys["reader"], "files:write", None),  # forbidden: missing scope
        (keys["fenced"], None, "192.0.2.1"),  # forbidden: outside the list
        (keys["fenced"], None, "10.1.2.3"),
    ]

    def one(i: int) -> str:
        key, scope, ip = calls[i % len(calls)]
        return verifier.verify(key, tag, scope=scope, ip=ip).outcome

    with ThreadPoolExecutor(max_workers=16) as pool:
        outcomes = list(pool.map(one, range(16 * 25)))
    verifier.close()
    assert outcomes.count("forbidden") == 2 * 16 * 25 // len(calls)
    for w in windows(policy_org["org_id"], tag):
        admitted = sum(n for name, n in w.items() if name.endswith(":ok"))
        asking = admitted + sum(n for name, n in w.items() if name.endswith(":rate_limited"))
        assert admitted == min(FREE, asking)


def test_the_monthly_quota_is_exact_with_many_threads(policy_org):
    """A Free organization 25 calls short of its quota, 16 threads on two keys: exactly 25 admitted, the rest
    quota_exceeded, and the quota counter ends at the quota."""
    org_id = policy_org["org_id"]
    quota = PLANS["free"].monthly_quota
    db.session.execute(
        sa.text(
            "INSERT INTO rate_limit_tracking (bucket, window_start, organization_id, count) VALUES "
            "(:b, date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', :org, :n)"
        ),
        {"b": f"quota:{org_id}", "org": org_id, "n": quota - 25},
    )
    db.session.commit()
    verifier = make_verifier(policy_org["url"], policy_org["pepper"])
    keys, tag = policy_org["keys"], policy_org["tag"]
    with ThreadPoolExecutor(max_workers=16) as pool:
        outcomes = list(
            pool.map(lambda i: verifier.verify(keys["open" if i % 2 else "limited"], tag).outcome, range(80))
        )
    verifier.close()
    counts = Counter(outcomes)
    assert counts["ok"] == 25 or (counts["ok"] < 25 and counts["rate_limited"] > 0)  # a per-minute limit may bind
    db.session.rollback()
    used = db.session.scalar(
        sa.text("SELECT count FROM rate_limit_tracking WHERE bucket = :b"), {"b": f"quota:{org_id}"}
    )
    assert used == quota - 25 + counts["ok"]
    if counts["ok"] == 25:
        assert counts["quota_exceeded"] + counts["rate_limited"] == 55


def _post(base: str, path: str, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> int:
    data = json.dumps(body).encode() if body is not None else b""
    req = urllib.request.Request(  # noqa: S310 - the loopback test server
        f"{base}{path}",
        data=data,
        headers={"Content-Type": "application/json", **(headers or {})},
        method="POST" if body is not None or path == "/v1/files" else "GET",
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310 - loopback
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _limited_calls(url: str, pepper: str, key: str, tag: str, calls: int, queue: Any) -> None:
    verifier = make_verifier(url, pepper)
    admitted = sum(verifier.verify(key, tag).outcome == "ok" for _ in range(calls))
    verifier.close()
    queue.put(admitted)


def test_a_key_limit_is_shared_by_processes(policy_org):
    """Two processes (two connections, like two workers) on the limited key, from its first call of the
    minute: exactly 7 admitted per minute. Both may open the key's counter row at once; the statement that
    loses that race undoes itself and runs again (sql._verify, step 3), so nothing is admitted twice."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    args = (policy_org["url"], policy_org["pepper"], policy_org["keys"]["limited"], policy_org["tag"], 20, queue)
    procs = [ctx.Process(target=_limited_calls, args=args) for _ in range(2)]
    for proc in procs:
        proc.start()
    admitted = [queue.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(30)
    per_minute = windows(policy_org["org_id"], policy_org["tag"])
    assert sum(sum(w.values()) for w in per_minute) == 40
    for w in per_minute:
        assert w.get("limited:ok", 0) == min(7, w.get("limited:ok", 0) + w.get("limited:rate_limited", 0))
    assert sum(admitted) == sum(w.get("limited:ok", 0) for w in per_minute)


def test_policy_through_gunicorn(policy_org, tmp_path):
    """The real server (2 gevent workers): scopes, allowlists, the per-key limit and the monthly quota on
    /v1/keys/verify and on routes behind @require_api_key (POST /v1/files needs files:write; GET /v1/whoami
    sees 127.0.0.1)."""
    keys, tag = policy_org["keys"], policy_org["tag"]
    full = factories.org(plan="free")  # two calls short of its monthly quota
    full_key = factories.api_key(full, None).plaintext
    db.session.execute(
        sa.text(
            "INSERT INTO rate_limit_tracking (bucket, window_start, organization_id, count) VALUES "
            "(:b, date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', :org, :n)"
        ),
        {"b": f"quota:{full.id}", "org": full.id, "n": PLANS["free"].monthly_quota - 2},
    )
    db.session.commit()
    try:
        _through_gunicorn(policy_org, tmp_path, keys, tag, full_key)
    finally:
        db.session.rollback()
        db.session.execute(sa.delete(ApiKeyUsage).where(ApiKeyUsage.organization_id == full.id))
        db.session.execute(sa.delete(Organization).where(Organization.id == full.id))
        db.session.commit()


def _through_gunicorn(policy_org: dict[str, Any], tmp_path: Any, keys: dict[str, str], tag: str, full_key: str) -> None:
    with gunicorn(policy_org["url"], tmp_path, API_KEY_PEPPER=policy_org["pepper"]) as base:
        quota_statuses = [_post(base, "/v1/keys/verify", {"key": full_key, "endpoint": tag}) for _ in range(3)]
        whoami_over_quota = _post(base, "/v1/whoami", headers={"Authorization": f"Bearer {full_key}"})
        verify = "/v1/keys/verify"
        assert _post(base, verify, {"key": keys["reader"], "scope": "files:read", "endpoint": tag}) == 200
        assert _post(base, verify, {"key": keys["reader"], "scope": "files:write", "endpoint": tag}) == 403
        assert _post(base, verify, {"key": keys["reader"], "scope": "files:nope", "endpoint": tag}) == 400
        assert _post(base, verify, {"key": keys["fenced"], "client_ip": "10.9.9.9", "endpoint": tag}) == 200
        assert _post(base, verify, {"key": keys["fenced"], "client_ip": "192.0.2.1", "endpoint": tag}) == 403
        assert _post(base, verify, {"key": keys["fenced"], "endpoint": tag}) == 403
        bearer = {"Authorization": f"Bearer {keys['reader']}"}
        assert _post(base, "/v1/files", headers=bearer) == 403
        assert _post(base, "/v1/files", headers={"Authorization": f"Bearer {keys['open']}"}) == 200
        assert _post(base, "/v1/whoami", headers={"Authorization": f"Bearer {keys['fenced']}"}) == 403
        with ThreadPoolExecutor(max_workers=8) as pool:
            statuses = list(
                pool.map(lambda i: _post(base, verify, {"key": keys["limited"], "endpoint": tag}), range(40))
            )
        limited_whoami = _post(base, "/v1/whoami", headers={"Authorization": f"Bearer {keys['limited']}"})
    assert quota_statuses == [200, 200, 429] and whoami_over_quota == 429
    assert set(statuses) == {200, 429}
    db.session.rollback()
    ok_by_minute = db.session.execute(
        sa.text(
            "SELECT count(*) FILTER (WHERE outcome = 'ok'), count(*) FROM api_key_usage u JOIN api_keys k "
            "ON k.id = u.key_id WHERE k.name = 'limited' AND u.organization_id = :org "
            "GROUP BY date_trunc('minute', occurred_at)"
        ),
        {"org": policy_org["org_id"]},
    ).all()
    for admitted, total in ok_by_minute:
        assert admitted == min(7, total)
    if len(ok_by_minute) == 1:
        assert statuses.count(200) + (limited_whoami == 200) == 7
