"""Counts of invalid keys through a real gunicorn: several workers flushing the same minute, address and outcome
at once add up exactly, and what clients were answered is what was counted."""

from __future__ import annotations

import ipaddress
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
from portal.keys import format as keyformat
from tests.servers import gunicorn

pytestmark = pytest.mark.concurrency


@pytest.fixture
def addresses() -> Iterator[list[str]]:
    """Client addresses of this test only; their counts are deleted afterwards."""
    prefix = f"2001:db8:{uuid.uuid4().hex[:4]}:{uuid.uuid4().hex[:4]}"
    ips = [str(ipaddress.ip_address(f"{prefix}::{i + 1:x}")) for i in range(6)]  # canonical, as stored
    yield ips
    db.session.rollback()
    db.session.execute(sa.text("DELETE FROM api_invalid_key_counts WHERE host(client_ip) = ANY(:ips)"), {"ips": ips})
    db.session.commit()


def _post(base: str, body: dict[str, Any]) -> tuple[int, str]:
    req = urllib.request.Request(  # noqa: S310 - the loopback test server
        f"{base}/v1/keys/verify",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310 - loopback
            return int(resp.status), json.load(resp)["code"]
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.load(exc)["code"]


def test_workers_flushing_at_once_count_exactly(app, addresses, tmp_path):
    url = app.config["SQLALCHEMY_DATABASE_URI"]
    tag = f"/garbage/{uuid.uuid4().hex}"
    per_address = 120
    calls = [
        {
            "key": keyformat.generate("live") if i % 3 == 0 else f"garbage-{i}",
            "client_ip": addresses[i % len(addresses)],
            "endpoint": tag,
        }
        for i in range(per_address * len(addresses))
    ]
    with (
        gunicorn(
            url,
            tmp_path,
            API_KEY_PEPPER=app.config["API_KEY_PEPPER"],
            GUNICORN_WORKERS="3",
            API_USAGE_FLUSH_INTERVAL="0.02",  # the workers' flushes overlap
            API_INVALID_KEY_BUDGET="10",
        ) as base,
        ThreadPoolExecutor(max_workers=24) as pool,
    ):
        answers = list(pool.map(lambda body: (body["client_ip"], _post(base, body)), calls))
    db.session.rollback()
    seen = Counter((ip, code) for ip, (_, code) in answers)
    assert {(status, code) for _, (status, code) in answers} <= {
        (401, "malformed"),
        (401, "unknown"),
        (429, "too_many_invalid_keys"),
    }
    for ip in addresses:  # each worker admits about 10 failed calls per address (plus calls in flight), then 429
        assert seen[(ip, "too_many_invalid_keys")] > 0
    stored = db.session.execute(
        sa.text(
            "SELECT host(client_ip), outcome, sum(calls)"
            " FROM api_invalid_key_counts WHERE host(client_ip) = ANY(:ips) GROUP BY 1, 2"
        ),
        {"ips": addresses},
    ).all()
    assert {(ip, outcome): int(calls) for ip, outcome, calls in stored} == dict(seen)
    assert sum(int(calls) for _, _, calls in stored) == len(calls)
    usage = db.session.scalar(sa.text("SELECT count(*) FROM api_key_usage WHERE endpoint = :tag"), {"tag": tag})
    assert usage == 0
