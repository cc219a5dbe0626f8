"""The usage benchmark's scale mode (``make bench-usage BENCH_ARGS="--scale"``): 100M events over 10,000 keys in
1,000 organizations across 90 days, loaded fast, with its own targets.

Loading: the organizations and keys in bulk; then the events before the last ``tail_days`` inserted set-based
(``flask usage simulate``'s generator with the rollup triggers off for this session) and their rollups written
per UTC day straight from the raw events (one aggregation per day, the same sums the triggers and folds make,
checked against the raw events afterwards); then the last ``tail_days`` through ``flask usage simulate`` itself,
triggers, folds and all, whose rate is the ingest target. Both parts have the same events per day.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from bench.harness import backend_pids, cpu_seconds
from portal.extensions import db
from portal.models import Organization
from portal.timeutil import utcnow
from portal.usage import partitions
from portal.usage import simulate as sim
from portal.verification.outcomes import OUTCOMES

ORGS, KEYS_PER_ORG, EVENTS, DAYS = 1_000, 10, 100_000_000, 90
TAIL_DAYS = 9  # the last days go through `flask usage simulate` (10M of the 100M)
TARGET_INGEST, TARGET_DROP_S = 100_000, 1.0
# What one million events took on disk in the scale run (raw table and indexes, rollups), with room for WAL.
BYTES_PER_MILLION = 380 * 2**20
DISK_MARGIN = 4 * 2**30

_COUNTS = ", ".join(["calls", *OUTCOMES, "latency_ms_sum"])
_SUMS = ", ".join(f"sum({c})" for c in ["calls", *OUTCOMES, "latency_ms_sum"])
_AGGREGATES = ", ".join(
    [
        "count(*) AS calls",
        *(f"count(*) FILTER (WHERE outcome = '{o}') AS {o}" for o in OUTCOMES),
        "coalesce(sum(latency_ms), 0) AS latency_ms_sum",
    ]
)
# One UTC day of raw events, summed like the rollup trigger does (migration 0003), then each rollup table's rows
# from those sums (like usage_rollup_fold, into tables that have no rows for that day yet).
DAY_SUMS = f"""
CREATE TEMP TABLE day_sums ON COMMIT DROP AS
SELECT n.organization_id, k.id AS key_id, coalesce(k.environment, 'none') AS environment,
       date_trunc('hour', n.occurred_at, 'UTC') AS bucket, coalesce(n.endpoint, '') AS endpoint, {_AGGREGATES}
FROM api_key_usage n LEFT JOIN api_keys k ON k.id = n.key_id AND k.organization_id = n.organization_id
WHERE n.occurred_at >= :day AND n.occurred_at < :next AND n.organization_id IS NOT NULL
GROUP BY 1, 2, 3, 4, 5
"""  # noqa: S608 -- constants only
ROLLUPS = [  # noqa: S608 -- constants only
    f"INSERT INTO usage_org_hourly (organization_id, bucket, environment, {_COUNTS})"  # noqa: S608
    f" SELECT organization_id, bucket, environment, {_SUMS} FROM day_sums GROUP BY 1, 2, 3",
    f"INSERT INTO usage_key_hourly (key_id, bucket, organization_id, environment, {_COUNTS})"  # noqa: S608
    f" SELECT key_id, bucket, min(organization_id::text)::uuid, min(environment), {_SUMS}"
    " FROM day_sums WHERE key_id IS NOT NULL GROUP BY 1, 2",
    f"INSERT INTO usage_key_daily (key_id, day, organization_id, environment, {_COUNTS})"  # noqa: S608
    f" SELECT key_id, (bucket AT TIME ZONE 'UTC')::date, min(organization_id::text)::uuid, min(environment),"
    f" {_SUMS} FROM day_sums WHERE key_id IS NOT NULL GROUP BY 1, 2",
    "INSERT INTO usage_endpoint_hourly (organization_id, bucket, endpoint, calls, errors)"
    " SELECT organization_id, bucket, endpoint, sum(calls), sum(calls - ok) FROM day_sums GROUP BY 1, 2, 3",
    "INSERT INTO usage_key_endpoint_daily (key_id, day, endpoint, organization_id, calls, errors)"
    " SELECT key_id, (bucket AT TIME ZONE 'UTC')::date, endpoint, min(organization_id::text)::uuid, sum(calls),"
    " sum(calls - ok) FROM day_sums WHERE key_id IS NOT NULL GROUP BY 1, 2, 3",
    # The clients rollup (migration 0012); the hourly one keeps 48 hours, which the tail covers.
    "INSERT INTO usage_key_clients_daily (key_id, day, client_ip, user_agent, organization_id, calls, first_seen,"
    " last_seen) SELECT n.key_id, (n.occurred_at AT TIME ZONE 'UTC')::date, coalesce(host(n.client_ip), ''),"
    " coalesce(n.user_agent, ''), n.organization_id, count(*), min(n.occurred_at), max(n.occurred_at)"
    " FROM api_key_usage n JOIN api_keys k ON k.id = n.key_id AND k.organization_id = n.organization_id"
    " WHERE n.occurred_at >= :day AND n.occurred_at < :next GROUP BY 1, 2, 3, 4, 5",
]


@dataclass
class Loaded:
    org_id: Any
    events: int
    ingest_per_s: float  # through flask usage simulate (the tail)
    bulk_s: float
    tail_s: float


def data_directory_free(url: str) -> tuple[str, int | None]:
    """The server's data directory and the free bytes on its file system, when it is on this machine."""
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        path = conn.scalar(sa.text("SHOW data_directory"))
    engine.dispose()
    if not os.path.isdir(path):
        return path, None
    return path, shutil.disk_usage(path).free


def check_disk(url: str, events: int) -> bool:
    """Refuse (False, with the reason printed) when the server's disk cannot take the run."""
    need = events / 1e6 * BYTES_PER_MILLION + DISK_MARGIN
    path, free = data_directory_free(url)
    if free is None:
        print(f"disk: cannot see {path} from here; the run needs about {need / 2**30:,.0f} GB free there")
        return True
    print(f"disk: {free / 2**30:,.1f} GB free at {path}; the run needs about {need / 2**30:,.0f} GB")
    if free < need:
        print(
            f"refused: {events:,} events need about {need / 2**30:,.0f} GB on the PostgreSQL server's disk"
            f" ({BYTES_PER_MILLION / 2**20:,.0f} MB per million events and {DISK_MARGIN / 2**30:.0f} GB for WAL),"
            f" and {path} has {free / 2**30:,.1f} GB free. Free some space or run fewer events (--events)."
        )
        return False
    return True


def create_orgs(owner: Any, count: int) -> list[Organization]:
    """The busiest organization (Enterprise, slug ``bench``, owned by the signed-in owner) and ``count - 1``
    others on Pro, in bulk."""
    from portal.orgs.services import create_organization

    create_organization("Bench Corp", owner, plan="enterprise", slug="bench")
    db.session.execute(
        sa.text(
            "INSERT INTO organizations (name, slug, plan)"
            " SELECT 'Bench Org ' || i, 'bench-' || i, 'pro' FROM generate_series(2, :n) AS i"
        ),
        {"n": count},
    )
    db.session.commit()
    first = db.session.scalars(sa.select(Organization).where(Organization.slug == "bench")).one()
    rest = db.session.scalars(
        sa.select(Organization).where(Organization.slug.like("bench-%")).order_by(Organization.created_at)
    ).all()
    return [first, *sorted(rest, key=lambda o: int(o.slug.split("-")[1]))]


def bulk_events(orgs: Sequence[Organization], events: int, start: datetime, end: datetime, jobs: int) -> None:
    """The events from ``start`` to ``end`` with the simulator's generator, the rollup triggers off for these
    sessions (their rollups come from :func:`bulk_rollups`)."""
    params = sim.generator_params(orgs, KEYS_PER_ORG, events, start, end)
    chunks = [(lo, min(lo + 1_000_000, events)) for lo in range(0, events, 1_000_000)]

    def insert(conn: sa.Connection, lo_hi: tuple[int, int]) -> None:
        conn.execute(sa.text("SET LOCAL session_replication_role = replica"))  # no triggers in this transaction
        conn.execute(sim.SIMULATE_SQL, {**params, "lo": lo_hi[0], "hi": lo_hi[1]})
        conn.commit()

    parallel(db.engine, chunks, insert, jobs, "events", len(chunks))


def bulk_rollups(start: datetime, end: datetime, jobs: int) -> None:
    """Each UTC day's rollup rows from its raw events, a day per transaction."""
    day = start.replace(hour=0, minute=0, second=0, microsecond=0)
    days = []
    while day < end:
        days.append(day)
        day += timedelta(days=1)

    def rollups(conn: sa.Connection, day: datetime) -> None:
        bounds = {"day": max(day, start), "next": min(day + timedelta(days=1), end)}
        conn.execute(sa.text("SET LOCAL work_mem = '256MB'"))
        conn.execute(sa.text(DAY_SUMS), bounds)
        for statement in ROLLUPS:
            conn.execute(sa.text(statement), bounds)
        conn.commit()

    parallel(db.engine, days, rollups, jobs, "days of rollups", len(days))


def parallel(
    engine: sa.Engine,
    items: Sequence[Any],
    work: Callable[[sa.Connection, Any], None],
    jobs: int,
    label: str,
    total: int,
) -> None:
    todo = iter(items)
    lock = threading.Lock()
    errors: list[BaseException] = []
    done = [0]
    started = time.perf_counter()

    def run() -> None:
        try:
            with engine.connect() as conn:
                while not errors:
                    with lock:
                        item = next(todo, None)
                    if item is None:
                        return
                    work(conn, item)
                    with lock:
                        done[0] += 1
                        if done[0] % 10 == 0 or done[0] == total:
                            print(f"  {done[0]:>4}/{total} {label}  {time.perf_counter() - started:7.1f} s", flush=True)
        except BaseException as exc:  # noqa: BLE001 -- raised again below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def load(owner: Any, events: int, jobs: int, tail_days: int = TAIL_DAYS) -> Loaded:
    """Organizations, keys, the bulk of the events and their rollups, then the tail through the simulator."""
    now = utcnow()
    start, tail_start = now - timedelta(days=DAYS), now - timedelta(days=tail_days)
    started = time.perf_counter()
    orgs = create_orgs(owner, ORGS)
    for org in orgs:  # created once here, so both parts rank the keys in the same order
        sim.ensure_keys(org, KEYS_PER_ORG)
    took = time.perf_counter() - started
    print(f"organizations and keys: {len(orgs):,} and {len(orgs) * KEYS_PER_ORG:,} in {took:.1f} s")
    tail = round(events * tail_days / DAYS)
    bulk = events - tail
    started = time.perf_counter()
    bulk_events(orgs, bulk, start, tail_start, jobs)
    events_s = time.perf_counter() - started
    bulk_rollups(start, tail_start, jobs)
    bulk_s = time.perf_counter() - started
    print(
        f"bulk: {bulk:,} events in {events_s:.0f} s ({bulk / events_s:,.0f}/s), their rollups in"
        f" {bulk_s - events_s:.0f} s",
        flush=True,
    )
    url = db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    cpu_before = cpu_seconds(backend_pids(url))
    started = time.perf_counter()
    done = [0]

    def progress(n: int) -> None:
        done[0] += n
        if done[0] % 1_000_000 < n:
            print(f"  simulated {done[0]:>11,} events  {time.perf_counter() - started:6.1f} s", flush=True)

    sim.simulate(orgs, tail, tail_days, key_count=KEYS_PER_ORG, progress=progress, now=now, jobs=jobs, chunk=500_000)
    tail_s = time.perf_counter() - started
    cpu_us = (cpu_seconds(backend_pids(url)) - cpu_before) * 1e6 / tail
    print(
        f"flask usage simulate: {tail:,} events in {tail_s:.0f} s ({tail / tail_s:,.0f}/s, {jobs} jobs);"
        f" PostgreSQL's CPU {cpu_us:.1f} µs per event ({TARGET_INGEST:,}/s would keep"
        f" {cpu_us * TARGET_INGEST / 1e6:.1f} cores busy)",
        flush=True,
    )
    return Loaded(orgs[0].id, events, tail / tail_s, bulk_s, tail_s)


def disk_report(events: int) -> dict[str, int]:
    """Bytes of the raw table (heap), its indexes and the rollups, in all and per million events (printed)."""
    raw = db.session.execute(
        sa.text(
            "SELECT coalesce(sum(pg_table_size(inhrelid)), 0), coalesce(sum(pg_indexes_size(inhrelid)), 0)"
            " FROM pg_inherits WHERE inhparent = 'api_key_usage'::regclass"
        )
    ).one()
    rollups = db.session.scalar(
        sa.text(
            "SELECT sum(pg_total_relation_size(oid)) FROM pg_class WHERE relkind = 'r' AND relname IN"
            " ('usage_org_hourly', 'usage_key_hourly', 'usage_key_daily', 'usage_endpoint_hourly',"
            " 'usage_key_endpoint_daily', 'usage_key_clients_hourly', 'usage_key_clients_daily',"
            " 'usage_rollup_pending', 'usage_client_pending')"
        )
    )
    sizes = {"table": int(raw[0]), "indexes": int(raw[1]), "rollups": int(rollups or 0)}
    per = events / 1e6
    print(
        "disk per million events: "
        + ", ".join(f"{name} {size / per / 2**20:,.1f} MB" for name, size in sizes.items())
        + f" (in all {sum(sizes.values()) / 2**30:,.1f} GB for {events:,} events)"
    )
    return sizes


def time_drop() -> tuple[float, partitions.Partition | None]:
    """Retention's drop of the oldest whole day (the oldest partition holds part of a day: dropped first)."""
    oldest = partitions.listing()[0]
    partitions.drop_expired(utcnow() - oldest.end - timedelta(minutes=1))  # the partial day
    victim = partitions.listing()[0]
    db.session.commit()
    started = time.perf_counter()
    dropped = partitions.drop_expired(utcnow() - victim.end - timedelta(minutes=1))
    seconds = time.perf_counter() - started
    return seconds, (dropped[0] if dropped else None)


def verdict(loaded: Loaded, drop_s: float, victim: partitions.Partition | None) -> bool:
    ingest_ok = loaded.ingest_per_s >= TARGET_INGEST
    drop_ok = victim is not None and drop_s <= TARGET_DROP_S
    size = f"{victim.rows:,} rows, {victim.bytes / 2**20:,.0f} MB" if victim else "none dropped"
    print(
        f"target: ingest through flask usage simulate {loaded.ingest_per_s:,.0f} events/s"
        f" (>= {TARGET_INGEST:,}) -> {'PASS' if ingest_ok else 'FAIL'}"
    )
    print(
        f"target: dropping one expired partition ({size}) {drop_s:.2f} s (<= {TARGET_DROP_S:.0f} s)"
        f" -> {'PASS' if drop_ok else 'FAIL'}"
    )
    return ingest_ok and drop_ok
