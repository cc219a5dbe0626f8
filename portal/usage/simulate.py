"""Realistic simulated traffic, in bulk: millions of events per minute through the same insert trigger.

Each chunk is one ``INSERT … SELECT generate_series`` into ``api_key_usage``, so the rollup trigger sees it as
one statement, exactly like a batched writer would. Times follow a daily and a weekly rhythm (a monotonic time
warp, so chunks stay in time order), a few keys carry most calls, and a share of calls are rate-limited or use
revoked/expired keys. Like a real integration, each key calls three endpoints (one mostly) from up to three
clients (one mostly; each key has its own addresses, a tenth of them IPv6, and its own user agent, plus curl).
"""

from __future__ import annotations

import math
import threading
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from portal.extensions import db
from portal.keys import format as keyformat
from portal.keys.services import pepper
from portal.models import ApiKey, Organization
from portal.timeutil import utcnow
from portal.usage import maintenance, partitions

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
SELECT keys.ids[g.k], keys.orgs[g.k],
       to_timestamp(CASE WHEN g.t > g.hi THEN 2 * g.hi - g.t
                         WHEN g.t < g.lo THEN 2 * g.lo - g.t ELSE g.t END),
       (ARRAY['/v1/translate', '/v1/complete', '/v1/embed', '/v1/classify', '/v1/search', '/v1/moderate',
              '/v1/whoami', '/v1/files'])[1 + (g.k + floor(3 * power(g.r_ep, 2))::int) % 8],
       CASE WHEN g.r_out < .93 THEN 200 WHEN g.r_out < .98 THEN 429 ELSE 401 END,
       CASE WHEN g.r_out < .93 THEN 2 + 40 * power(g.r_lat, 3) ELSE 0.4 + g.r_lat END,
       CASE WHEN g.r_out < .93 THEN 'ok' WHEN g.r_out < .98 THEN 'rate_limited'
            WHEN g.r_out < .993 THEN 'revoked' ELSE 'expired' END,
       CAST(CASE WHEN g.k % 10 = 9 THEN '2001:db8::' || to_hex(g.k * 3 + g.c)
                 ELSE '203.0.113.' || (1 + (g.k * 3 + g.c) % 254) END AS inet),
       (ARRAY['procode-python/2.4.1', 'procode-node/1.9.0', 'curl/8.5.0'])
           [1 + CASE WHEN g.c = 2 THEN 2 ELSE g.k % 2 END]
FROM (SELECT CAST(:keys AS uuid[]) AS ids, CAST(:orgs AS uuid[]) AS orgs) AS keys,
     (SELECT w.x - {_DAILY_AMPLITUDE} * sin(2 * pi() * (w.x - {DAILY_PEAK}) / {DAY})
                 - {_WEEKLY_AMPLITUDE} * sin(2 * pi() * (w.x - {WEEKLY_PEAK}) / {WEEK}) AS t,
             w.lo, w.hi, 1 + floor(CAST(:nkeys AS int) * power(random(), 2.2))::int AS k, random() AS r_ep,
             random() AS r_out, random() AS r_lat, floor(3 * power(random(), 3))::int AS c
      FROM (SELECT extract(epoch FROM CAST(:start AS timestamptz)) + (i + random()) * :step AS x,
                   extract(epoch FROM CAST(:start AS timestamptz)) AS lo,
                   extract(epoch FROM CAST(:now AS timestamptz)) AS hi
            FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint) - 1) AS i) AS w) AS g
""")  # noqa: S608 -- only constants of this module are formatted in


def ensure_keys(org: Organization, count: int) -> list[uuid.UUID]:
    """At least ``count`` keys in ``org``: existing ones first (oldest first), then simulated ones (secrets
    discarded)."""
    ids = list(
        db.session.scalars(
            sa.select(ApiKey.id)
            .where(ApiKey.organization_id == org.id)
            .order_by(ApiKey.created_at, ApiKey.id)
            .limit(count)
        )
    )
    secret = pepper()
    added = []
    for n in range(len(ids), count):
        environment = "live" if n % 3 else "test"
        plaintext = keyformat.generate(environment)
        added.append(
            ApiKey(
                organization_id=org.id,
                name=f"Simulated {environment} key {n + 1}",
                environment=environment,
                hint=keyformat.hint(plaintext),
                key_hash=keyformat.key_hash(plaintext, secret),
                metadata_={"simulated": True},
            )
        )
    db.session.add_all(added)
    db.session.flush()  # one INSERT for them all
    ids += [key.id for key in added]
    db.session.commit()
    return ids


def generator_params(
    orgs: Sequence[Organization], key_count: int, events: int, start: datetime, end: datetime
) -> dict[str, Any]:
    """The parameters of :data:`SIMULATE_SQL` for ``events`` calls from ``start`` to ``end`` over ``key_count``
    keys of each organization (made if missing), with the partitions they land in made and committed."""
    key_ids: list[str] = []
    org_ids: list[str] = []
    for org in orgs:
        ids = ensure_keys(org, key_count)
        key_ids += map(str, ids)
        org_ids += [str(org.id)] * len(ids)
    partitions.ensure(start, end)
    db.session.commit()
    return {
        "keys": key_ids,
        "orgs": org_ids,
        "nkeys": len(key_ids),
        "start": start,
        "now": end,
        "step": (end - start).total_seconds() / max(events, 1),
    }


def simulate(
    orgs: Organization | Sequence[Organization],
    events: int,
    days: float,
    key_count: int = 5,
    chunk: int = 200_000,
    progress: Callable[[int], None] | None = None,
    now: datetime | None = None,
    vacuum_pending: bool = True,
    jobs: int = 1,
) -> int:
    """Insert ``events`` calls spread over the last ``days`` days, over ``key_count`` keys of each organization;
    one commit per chunk. Keys are ranked in the order of ``orgs`` (the first organization's keys are the
    busiest). ``jobs`` connections insert chunks side by side: the rollup triggers only append, and each job
    folds its own share of the organizations' fold lanes, so no job waits for another's fold."""
    orgs = [orgs] if isinstance(orgs, Organization) else list(orgs)
    now = now or utcnow()
    start = now - timedelta(days=days)
    params = generator_params(orgs, key_count, events, start, now)
    chunks = [(lo, min(lo + chunk, events)) for lo in range(0, events, chunk)]
    _insert_chunks(db.engine, chunks, params, progress, vacuum_pending, max(1, jobs))
    org_list = [str(org.id) for org in orgs]
    db.session.execute(
        sa.text("""
        UPDATE api_keys k SET last_used_at = last.at
        FROM (SELECT k2.id, (SELECT max(occurred_at) FROM api_key_usage u WHERE u.key_id = k2.id) AS at
              FROM api_keys k2 WHERE k2.organization_id = ANY(CAST(:orgs AS uuid[]))) AS last
        WHERE k.id = last.id AND last.at IS NOT NULL AND (k.last_used_at IS NULL OR k.last_used_at < last.at)
    """),
        {"orgs": org_list},
    )
    # The history is as if the organizations existed then; a younger created_at would make the quota
    # forecast pace only the last hours (see services.month_quota).
    db.session.execute(
        sa.text(
            "UPDATE organizations SET created_at = least(created_at, :start) WHERE id = ANY(CAST(:orgs AS uuid[]))"
        ),
        {"orgs": org_list, "start": start},
    )
    db.session.commit()
    return events


def _insert_chunks(
    engine: sa.Engine,
    chunks: list[tuple[int, int]],
    params: dict[str, Any],
    progress: Callable[[int], None] | None,
    vacuum_pending: bool,
    jobs: int,
) -> None:
    """Each chunk is one INSERT through the rollup triggers and a commit, then the pending sums of the job's share
    of the fold lanes are folded (and, if ``vacuum_pending``, their tables vacuumed: a bulk chunk leaves many dead
    pending rows). One job works in the session's own transaction and folds every lane; more take a connection
    each and fold side by side, never waiting for each other. A last whole fold takes what is left."""
    todo = iter(chunks)
    lock = threading.Lock()
    errors: list[BaseException] = []

    def run(
        execute: Callable[[sa.TextClause, dict[str, Any] | None], Any], commit: Callable[[], None], job: int = 0
    ) -> None:
        while not errors:
            with lock:
                lo_hi = next(todo, None)
            if lo_hi is None:
                break
            execute(SIMULATE_SQL, {**params, "lo": lo_hi[0], "hi": lo_hi[1]})
            commit()
            execute(FOLD_LANES_SQL, {"lanes": maintenance.lanes_of(job, jobs)})
            commit()
            if vacuum_pending:
                _vacuum(engine, "usage_rollup_pending", "usage_client_pending")
            if progress:
                with lock:
                    progress(lo_hi[1] - lo_hi[0])

    if jobs == 1:
        run(db.session.execute, db.session.commit)
    else:

        def work(job: int) -> None:
            try:
                with engine.connect() as conn:
                    run(conn.execute, conn.commit, job)
            except BaseException as exc:  # noqa: BLE001 -- raised again by the caller's thread
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,), name=f"simulate-{n}") for n in range(jobs)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
    maintenance.fold()  # the lanes another job held when this one came to them
    maintenance.fold_clients()


FOLD_LANES_SQL = sa.text(
    "SELECT usage_rollup_fold_lanes(CAST(:lanes AS int[])), usage_clients_fold_lanes(CAST(:lanes AS int[]))"
)


def _vacuum(engine: sa.Engine, *tables: str) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as auto:
        auto.execute(sa.text(f"VACUUM (SKIP_LOCKED, ANALYZE) {', '.join(tables)}"))


def vacuum(*tables: str) -> None:
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in tables:
            conn.execute(sa.text(f"VACUUM (ANALYZE) {table}"))


def vacuum_analyze(raw: bool = True) -> None:
    """Fresh statistics and visibility maps after a bulk load, so rollup indexes serve index-only scans; with
    ``raw=False`` the raw events (append-only, read by index only) are analyzed but not vacuumed."""
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
        "api_keys",
        *(["api_key_usage"] if raw else []),
    )
    if not raw:
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("ANALYZE api_key_usage"))
