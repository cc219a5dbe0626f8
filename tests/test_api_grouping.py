"""Grouped verification: a worker's concurrent calls share one statement, and admission stays exact.

On committed data (several connections), like tests/test_api_concurrency.py: the direct backend groups the
calls its threads have in flight; each organization's counter moves once per group, and every call still gets
its own count, so admitted calls per organization-minute are exactly ``min(limit, calls with a usable key)``.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from portal.extensions import db
from portal.keys import format as keyformat
from portal.models import ApiKey, ApiKeyUsage, Organization
from portal.plans import PLANS
from portal.verification import sql
from portal.verification.backend import DirectBackend, libpq_dsn
from portal.verification.usage_writer import BufferedRecorder
from portal.verification.verifier import Verifier
from tests import factories

pytestmark = pytest.mark.concurrency
FREE = PLANS["free"].requests_per_minute


@pytest.fixture
def orgs(app: Any) -> Iterator[dict[str, Any]]:
    """Three free organizations (``a``, ``b`` and ``full``, whose counter is at its limit) with two keys each,
    plus a revoked key of ``a``; committed, deleted with their usage and counters afterwards."""
    made = {name: factories.org(plan="free") for name in ("a", "b", "full")}
    keys = {name: [factories.api_key(o, None, name=f"k{i}").plaintext for i in range(2)] for name, o in made.items()}
    revoked = factories.api_key(made["a"], None, name="revoked")
    db.session.execute(
        sa.update(ApiKey).where(ApiKey.id == revoked.api_key.id).values(revoked_at=datetime.now(UTC) - timedelta(1))
    )
    # The full organization's counter is at the limit in this window and the next (the test may straddle them).
    for offset in (0, 60):
        db.session.execute(
            sa.text(
                "INSERT INTO rate_limit_tracking (bucket, window_start, organization_id, count) VALUES "
                "(:b, to_timestamp(floor(extract(epoch FROM now()) / 60) * 60 + :o), :org, :n)"
            ),
            {"b": sql.org_bucket(made["full"].id, "test"), "o": offset, "org": made["full"].id, "n": FREE},
        )
    db.session.commit()
    ids = {name: o.id for name, o in made.items()}
    tag = f"/grouping/{uuid.uuid4().hex}"
    client_ip = f"2001:db8::{uuid.uuid4().hex[:4]}:{uuid.uuid4().hex[:4]}"  # this test's calls' address
    yield {
        "client_ip": client_ip,
        "ids": ids,
        "keys": keys,
        "revoked": revoked.plaintext,
        "tag": tag,
        "url": app.config["SQLALCHEMY_DATABASE_URI"],
        "pepper": app.config["API_KEY_PEPPER"],
    }
    db.session.rollback()
    db.session.execute(
        sa.delete(ApiKeyUsage).where(
            sa.or_(ApiKeyUsage.organization_id.in_(list(ids.values())), ApiKeyUsage.endpoint == tag)
        )
    )
    db.session.execute(
        sa.text("DELETE FROM rate_limit_tracking WHERE organization_id = ANY(:ids)"), {"ids": list(ids.values())}
    )
    db.session.execute(sa.text("DELETE FROM api_invalid_key_counts WHERE client_ip = :ip"), {"ip": client_ip})
    db.session.execute(sa.delete(Organization).where(Organization.id.in_(list(ids.values()))))
    db.session.commit()


def counter(org_id: uuid.UUID) -> int:
    db.session.rollback()
    return int(
        db.session.scalar(
            sa.text(
                "SELECT coalesce(sum(count), 0) FROM rate_limit_tracking "
                "WHERE bucket = :b AND window_start = to_timestamp(floor(extract(epoch FROM now()) / 60) * 60)"
            ),
            {"b": sql.org_bucket(org_id, "test")},
        )
    )


def test_one_group_numbers_each_call_within_its_organization(orgs):
    """One statement for a mixed group: per-organization counts are distinct and consecutive, the counter moves
    once by the group's usable calls, an organization at its limit is refused without being counted."""
    backend = DirectBackend(libpq_dsn(orgs["url"]))
    pepper = orgs["pepper"]

    def hashed(key: str) -> bytes:
        parsed = keyformat.parse(key)
        assert parsed is not None
        return keyformat.key_hash(parsed.key, pepper)

    a, b, full = orgs["keys"]["a"], orgs["keys"]["b"], orgs["keys"]["full"]
    plan = [a[0], b[0], full[0], a[1], orgs["revoked"], keyformat.generate("test"), a[0], b[1], full[1]]
    rows = backend.verify_many([hashed(k) for k in plan])
    backend.close()
    assert backend.groups == 1
    assert len(rows) == len(plan)
    assert rows[5] is None  # unknown key
    by_call = [(row[1], row[5], row[7]) if row is not None else None for row in rows]  # org, status, remaining
    ids = {name: str(i) for name, i in orgs["ids"].items()}
    assert [left for org, status, left in (by_call[i] for i in (0, 3, 6))] == [FREE - 1, FREE - 2, FREE - 3]
    assert [left for org, status, left in (by_call[i] for i in (1, 7))] == [FREE - 1, FREE - 2]
    assert by_call[4] == (ids["a"], "revoked", FREE)  # the counter before the group; not spent
    assert {(status, left) for _, status, left in (by_call[i] for i in (2, 8))} == {("rate_limited", 0)}  # by read
    if counter(orgs["ids"]["a"]) == 3:  # the same window (not straddling a minute)
        assert counter(orgs["ids"]["b"]) == 2
        assert counter(orgs["ids"]["full"]) == FREE  # not touched


def test_threads_grouped_for_mixed_organizations_admit_exactly(orgs):
    """Many threads on one verifier (one gunicorn worker): calls are grouped, every organization-minute admits
    exactly min(limit, usable calls), the full organization admits none, each call of an existing key is one
    usage row and each call of a malformed or unknown key is counted."""
    dsn = libpq_dsn(orgs["url"])
    backend = DirectBackend(dsn)
    verifier = Verifier(backend, BufferedRecorder(dsn, interval=0.05), orgs["pepper"])
    keys = orgs["keys"]
    candidates = [*keys["a"], *keys["b"], *keys["full"], orgs["revoked"], keyformat.generate("test"), "pk_bad"]
    calls = 16 * 30

    def one(i: int) -> tuple[str, str | None]:
        result = verifier.verify(candidates[i % len(candidates)], orgs["tag"], ip=orgs["client_ip"])
        return result.outcome, result.organization_id

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(one, range(calls)))
    verifier.close()

    assert backend.groups > 0  # 16 threads at once: some calls shared a statement
    ids = {str(i): name for name, i in orgs["ids"].items()}
    outcomes = Counter((ids.get(org or ""), outcome) for outcome, org in results)
    assert outcomes[("full", "ok")] == 0
    assert outcomes[("full", "rate_limited")] == 2 * calls // len(candidates)
    assert outcomes[("a", "revoked")] == calls // len(candidates)
    assert outcomes[(None, "unknown")] == outcomes[(None, "malformed")] == calls // len(candidates)

    db.session.rollback()
    rows = db.session.execute(
        sa.text(
            """
        SELECT organization_id, count(*) FILTER (WHERE outcome = 'ok'),
               count(*) FILTER (WHERE outcome IN ('ok', 'rate_limited'))
        FROM api_key_usage WHERE endpoint = :tag AND organization_id IS NOT NULL
        GROUP BY organization_id, date_trunc('minute', occurred_at)
        """
        ),
        {"tag": orgs["tag"]},
    ).all()
    for org_id, admitted, usable in rows:
        if ids[str(org_id)] == "full":
            assert admitted == 0
        else:
            assert admitted == min(FREE, usable)
    for name in ("a", "b"):
        assert outcomes[(name, "ok")] == sum(ok for org_id, ok, _ in rows if ids[str(org_id)] == name)
    total = db.session.scalar(
        sa.select(sa.func.count()).select_from(ApiKeyUsage).where(ApiKeyUsage.endpoint == orgs["tag"])
    )
    invalid = dict(
        db.session.execute(
            sa.text("SELECT outcome, sum(calls) FROM api_invalid_key_counts WHERE client_ip = :ip GROUP BY 1"),
            {"ip": orgs["client_ip"]},
        ).all()
    )
    assert invalid == {"malformed": calls // len(candidates), "unknown": calls // len(candidates)}
    assert total + sum(invalid.values()) == calls


def test_keys_with_counters_of_their_own_are_deferred_and_remembered(app):
    """In one group, keys without a limit of their own are decided by the first statement and a key with one
    by the second, exactly; the worker then sends that key to the second statement directly, which still
    answers it right after its own limit is removed."""
    org = factories.org(plan="pro")
    plain = factories.api_key(org, None, name="plain")
    limited = factories.api_key(org, None, name="limited")
    db.session.execute(sa.update(ApiKey).where(ApiKey.id == limited.api_key.id).values(rate_limit=2))
    db.session.commit()
    pepper = app.config["API_KEY_PEPPER"]

    def hashed(key: str) -> bytes:
        parsed = keyformat.parse(key)
        assert parsed is not None
        return keyformat.key_hash(parsed.key, pepper)

    p, k = hashed(plain.plaintext), hashed(limited.plaintext)
    backend = DirectBackend(libpq_dsn(app.config["SQLALCHEMY_DATABASE_URI"]))
    try:
        rows = backend.verify_many([p, k, k, k, p])
        assert [row[5] if row else None for row in rows] == ["ok", "ok", "ok", "rate_limited", "ok"]
        assert [row[6] if row else None for row in rows] == [
            PLANS["pro"].requests_per_minute,
            2,
            2,
            2,
            PLANS["pro"].requests_per_minute,
        ]
        assert backend._counted == {k}
        db.session.execute(sa.update(ApiKey).where(ApiKey.id == limited.api_key.id).values(rate_limit=None))
        db.session.commit()
        (row,) = backend.verify_many([k])
        assert row is not None and row[5] == "ok" and row[6] == PLANS["pro"].requests_per_minute
    finally:
        backend.close()
        db.session.rollback()
        db.session.execute(sa.text("DELETE FROM rate_limit_tracking WHERE organization_id = :o"), {"o": org.id})
        db.session.execute(sa.delete(Organization).where(Organization.id == org.id))
        db.session.commit()
