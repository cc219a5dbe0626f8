"""Realistic simulated traffic, in bulk: millions of events per minute through the same insert trigger.

Each chunk is one ``INSERT … SELECT generate_series`` into ``api_key_usage``, so the rollup trigger sees it as
one statement, exactly like a batched writer would. Times follow a daily and a weekly rhythm (a monotonic time
warp, so chunks stay in time order), a few keys carry most calls, and a share of calls are rate-limited or use
revoked/expired keys.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

import sqlalchemy as sa

from portal.extensions import db
from portal.keys import format as keyformat
from portal.keys.services import pepper
from portal.models import ApiKey, Organization
from portal.timeutil import utcnow
from portal.usage.maintenance import fold, fold_clients

DAY, WEEK = 86_400, 7 * 86_400
DAILY_PEAK, WEEKLY_PEAK = (
    15 * 3600,
    6 * DAY + 12 * 3600,
)  # 15:00 UTC; Wednesday noon (epoch 0 was a Thursday)
DAILY_SWING, WEEKLY_SWING = 0.5, 0.2
# The warp t = x - a·sin(…) stays increasing while the swings sum below 1; times pushed past either end of the
# window are reflected back into it, so no instant collects a pile of calls.
_DAILY_AMPLITUDE = round(DAILY_SWING * DAY / (2 * math.pi), 3)
_WEEKLY_AMPLITUDE = round(WEEKLY_SWING * WEEK / (2 * math.pi), 3)

SIMULATE_SQL = sa.text(f"""
INSERT INTO api_key_usage
    (key_id, organization_id, occurred_at, endpoint, status_code, latency_ms, outcome, client_ip, user_agent)
SELECT keys.ids[1 + floor(keys.n * power(g.r_key, 2.2))::int], :org,
       to_timestamp(CASE WHEN g.t > g.hi THEN 2 * g.hi - g.t
                         WHEN g.t < g.lo THEN 2 * g.lo - g.t ELSE g.t END),
       CASE WHEN g.r_ep < .30 THEN '/v1/translate' WHEN g.r_ep < .55 THEN '/v1/complete'
            WHEN g.r_ep < .70 THEN '/v1/embed' WHEN g.r_ep < .80 THEN '/v1/classify'
            WHEN g.r_ep < .88 THEN '/v1/search' WHEN g.r_ep < .94 THEN '/v1/moderate'
            WHEN g.r_ep < .98 THEN '/v1/whoami' ELSE '/v1/files' END,
       CASE WHEN g.r_out < .93 THEN 200 WHEN g.r_out < .98 THEN 429 ELSE 401 END,
       CASE WHEN g.r_out < .93 THEN 2 + 40 * power(g.r_lat, 3) ELSE 0.4 + g.r_lat END,
       CASE WHEN g.r_out < .93 THEN 'ok' WHEN g.r_out < .98 THEN 'rate_limited'
            WHEN g.r_out < .993 THEN 'revoked' ELSE 'expired' END,
       CAST(CASE WHEN g.r_cli < .9 THEN '203.0.113.' || (10 + floor(power(g.r_cli, 3) * 12))::int
                 ELSE '2001:db8::' || (1 + floor((g.r_cli - .9) * 40))::int END AS inet),
       CASE WHEN g.r_cli < .6 THEN 'procode-python/2.4.1' WHEN g.r_cli < .85 THEN 'procode-node/1.9.0'
            ELSE 'curl/8.5.0' END
FROM (SELECT CAST(:keys AS uuid[]) AS ids, CAST(:nkeys AS int) AS n) AS keys,
     (SELECT w.x - {_DAILY_AMPLITUDE} * sin(2 * pi() * (w.x - {DAILY_PEAK}) / {DAY})
                 - {_WEEKLY_AMPLITUDE} * sin(2 * pi() * (w.x - {WEEKLY_PEAK}) / {WEEK}) AS t,
             w.lo, w.hi, random() AS r_key, random() AS r_ep, random() AS r_out, random() AS r_lat,
             random() AS r_cli
      FROM (SELECT extract(epoch FROM CAST(:start AS timestamptz)) + (i + random()) * :step AS x,
                   extract(epoch FROM CAST(:start AS timestamptz)) AS lo,
                   extract(epoch FROM CAST(:now AS timestamptz)) AS hi
            FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint) - 1) AS i) AS w) AS g
""")  # noqa: S608 -- only constants of this module are formatted in


def ensure_keys(org: Organization, count: int) -> list[uuid.UUID]:
    """At least ``count`` keys in ``org``: existing ones first, then simulated ones (secrets discarded)."""
    ids = list(
        db.session.scalars(
            sa.select(ApiKey.id).where(ApiKey.organization_id == org.id).order_by(ApiKey.created_at).limit(count)
        )
    )
    secret = pepper()
    for n in range(len(ids), count):
        environment = "live" if n % 3 else "test"
        plaintext = keyformat.generate(environment)
        key = ApiKey(
            organization_id=org.id,
            name=f"Simulated {environment} key {n + 1}",
            environment=environment,
            hint=keyformat.hint(plaintext),
            key_hash=keyformat.key_hash(plaintext, secret),
            metadata_={"simulated": True},
        )
        db.session.add(key)
        db.session.flush()
        ids.append(key.id)
    db.session.commit()
    return ids


def simulate(
    org: Organization,
    events: int,
    days: float,
    key_count: int = 5,
    chunk: int = 200_000,
    progress: Callable[[int], None] | None = None,
    now: datetime | None = None,
    vacuum_pending: bool = True,
) -> int:
    """Insert ``events`` calls spread over the last ``days`` days for ``org``; one commit per chunk."""
    now = now or utcnow()
    start = now - timedelta(days=days)
    key_ids = [str(k) for k in ensure_keys(org, key_count)]
    step = (now - start).total_seconds() / max(events, 1)
    done = 0
    while done < events:
        hi = min(done + chunk, events)
        db.session.execute(
            SIMULATE_SQL,
            {
                "org": org.id,
                "keys": key_ids,
                "nkeys": len(key_ids),
                "start": start,
                "now": now,
                "step": step,
                "lo": done,
                "hi": hi,
            },
        )
        db.session.commit()
        fold()
        fold_clients()
        if vacuum_pending:  # a bulk chunk leaves many dead pending rows; do not wait for autovacuum
            vacuum("usage_rollup_pending", "usage_client_pending")
        if progress:
            progress(hi - done)
        done = hi
    db.session.execute(
        sa.text("""
        UPDATE api_keys k SET last_used_at = last.at
        FROM (SELECT k2.id, (SELECT max(occurred_at) FROM api_key_usage u WHERE u.key_id = k2.id) AS at
              FROM api_keys k2 WHERE k2.organization_id = :org) AS last
        WHERE k.id = last.id AND last.at IS NOT NULL AND (k.last_used_at IS NULL OR k.last_used_at < last.at)
    """),
        {"org": org.id},
    )
    # The history is as if the organization existed then; a younger created_at would make the quota
    # forecast pace only the last hours (see services.month_quota).
    db.session.execute(
        sa.text("UPDATE organizations SET created_at = least(created_at, :start) WHERE id = :org"),
        {"org": org.id, "start": start},
    )
    db.session.commit()
    return done


def vacuum(*tables: str) -> None:
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in tables:
            conn.execute(sa.text(f"VACUUM (ANALYZE) {table}"))


def vacuum_analyze() -> None:
    """Fresh statistics and visibility maps after a bulk load, so rollup indexes serve index-only scans."""
    vacuum(
        "usage_rollup_pending",
        "usage_client_pending",
        "usage_key_clients_hourly",
        "usage_key_clients_daily",
        "usage_org_hourly",
        "usage_key_hourly",
        "usage_key_daily",
        "usage_endpoint_hourly",
        "usage_key_endpoint_daily",
        "api_key_usage",
        "api_keys",
    )
