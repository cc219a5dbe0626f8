"""Which partition size for api_key_usage: the raw reads the key pages make, planning time against the number of
partitions, inserts, and the cost of dropping a partition, for a day, a week, a month and no partitions at all.

    .venv/bin/python bench/partitions.py                       # 3M events over 90 days; about 5 minutes
    .venv/bin/python bench/partitions.py --events 9000000      # closer to 100M events' partitions' depth

Steps: a fresh database on BENCH_DATABASE_URL; four copies of api_key_usage's columns and indexes (plain, and
partitioned by day, week and month over the 90 days and a week ahead), each loaded with the same events (no
triggers: the rollups are not what differs); then, interleaved between the layouts, each raw read the portal
makes (a key's last call, one page of its recent calls, page 20 of them, its newest time; one organization's day)
timed from the client, as SQLAlchemy sends them (parameters inlined, so the planner sees constants), with and
without the lower time bound the key pages take from the rollups; planning time alone against 15-1,000
partitions; a 500-row insert batch like the usage writer's; and DETACH CONCURRENTLY + DROP of the oldest
partition. Prints one table per measurement.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import bench_server_url, with_db  # noqa: E402

COLUMNS = """
    id bigint NOT NULL, key_id uuid, organization_id uuid, occurred_at timestamptz NOT NULL DEFAULT now(),
    endpoint varchar(200), status_code smallint NOT NULL, latency_ms float8, outcome varchar(20) NOT NULL,
    client_ip inet, user_agent varchar(256)
"""
LAYOUTS = {"none": None, "day": 1, "week": 7, "month": 30}

# Events over 90 days in time order, keys and organizations skewed like `flask usage simulate` (a few keys carry
# most calls), ten keys per organization.
LOAD_SQL = """
INSERT INTO {table} (id, key_id, organization_id, occurred_at, endpoint, status_code, latency_ms, outcome,
                     client_ip, user_agent)
SELECT g.i, md5(g.k::text)::uuid, md5('org' || (g.k / 10)::text)::uuid,
       %(start)s::timestamptz + (g.i * %(step)s) * interval '1 second',
       '/v1/' || (ARRAY['translate', 'complete', 'embed', 'classify'])[1 + (g.i %% 4)], 200, 5.0, 'ok',
       '203.0.113.10', 'procode-python/2.4.1'
FROM (SELECT i, floor(%(keys)s * power(random(), 2.2))::int AS k FROM generate_series(%(lo)s, %(hi)s) AS i) AS g
"""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=3_000_000)
    parser.add_argument("--keys", type=int, default=1_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--repeats", type=int, default=40, help="timed runs of each read per layout")
    parser.add_argument("--keep", action="store_true")
    return parser.parse_args()


def connect(url: str) -> Any:
    conn = psycopg2.connect(url)
    conn.autocommit = True
    return conn


def bounds(days: int, size: int, today: date) -> list[tuple[date, date]]:
    """Partition ranges from ``days`` ago to a week ahead, ``size`` days each, aligned on today."""
    first = today - timedelta(days=days + size - 1)
    first -= timedelta(days=(first - today).days % size)
    ranges = []
    day = first
    while day <= today + timedelta(days=7):
        ranges.append((day, day + timedelta(days=size)))
        day += timedelta(days=size)
    return ranges


def create(cur: Any, table: str, size: int | None, ranges: list[tuple[date, date]]) -> None:
    if size is None:
        cur.execute(f"CREATE TABLE {table} ({COLUMNS})")
    else:
        cur.execute(f"CREATE TABLE {table} ({COLUMNS}) PARTITION BY RANGE (occurred_at)")
        for lo, hi in ranges:
            cur.execute(
                f"CREATE TABLE {table}_p{lo:%Y%m%d} PARTITION OF {table}"
                f" FOR VALUES FROM ('{lo} 00:00:00+00') TO ('{hi} 00:00:00+00')"
            )


def index(cur: Any, table: str, size: int | None) -> None:
    cur.execute(f"ALTER TABLE {table} ADD PRIMARY KEY (id{'' if size is None else ', occurred_at'})")
    cur.execute(f"CREATE INDEX ON {table} (organization_id, occurred_at)")
    cur.execute(f"CREATE INDEX ON {table} (key_id, occurred_at)")
    cur.execute(f"VACUUM ANALYZE {table}")


def load(url: str, args: argparse.Namespace, now: datetime) -> dict[str, list[tuple[date, date]]]:
    conn = connect(url)
    cur = conn.cursor()
    layouts = {}
    start = now - timedelta(days=args.days)
    step = args.days * 86_400 / args.events
    for name, size in LAYOUTS.items():
        ranges = bounds(args.days, size or 1, now.date()) if size else []
        table = f"usage_{name}"
        create(cur, table, size, ranges)
        started = time.perf_counter()
        for lo in range(0, args.events, 1_000_000):
            hi = min(lo + 1_000_000, args.events) - 1
            cur.execute(
                LOAD_SQL.format(table=table),
                {"start": start, "step": step, "lo": lo, "hi": hi, "keys": args.keys},
            )
        index(cur, table, size)
        cur.execute("SELECT pg_total_relation_size(%s)", (table,))
        size_bytes = cur.fetchone()[0]
        if size:
            cur.execute(
                "SELECT coalesce(sum(pg_total_relation_size(inhrelid)), 0) FROM pg_inherits"
                " WHERE inhparent = %s::regclass",
                (table,),
            )
            size_bytes = cur.fetchone()[0]
        print(
            f"load {name:>5}: {len(ranges) or 1:4} partition(s), {args.events:,} events in"
            f" {time.perf_counter() - started:5.1f} s, {size_bytes / 2**20:,.0f} MB",
            flush=True,
        )
        layouts[name] = ranges
    conn.close()
    return layouts


def busiest(url: str) -> tuple[str, str, str]:
    """The busiest key, a quiet key (one of the least used), and the busiest organization."""
    conn = connect(url)
    cur = conn.cursor()
    cur.execute(
        "SELECT key_id, count(*) FROM usage_none WHERE occurred_at > now() - interval '1 day'"
        " GROUP BY 1 ORDER BY 2 DESC"
    )
    rows = cur.fetchall()
    cur.execute("SELECT organization_id FROM usage_none GROUP BY 1 ORDER BY count(*) DESC LIMIT 1")
    org = cur.fetchone()[0]
    conn.close()
    return str(rows[0][0]), str(rows[-1][0]), str(org)


def reads(key: str, quiet: str, org: str, now: datetime) -> dict[str, tuple[str, dict[str, Any]]]:
    """The raw reads of the key pages (portal/usage/services.py, forensics.py) and a rebuild's day of one
    organization, with their parameters; ``{bound}`` is where the lower time bound goes."""
    last = "SELECT occurred_at, host(client_ip), user_agent, endpoint, outcome, status_code FROM {t}"
    last += " WHERE key_id = %(key)s AND organization_id = %(org)s{bound} ORDER BY occurred_at DESC, id DESC LIMIT 1"
    recent = "SELECT occurred_at, endpoint, status_code, outcome, latency_ms, host(client_ip), user_agent FROM {t}"
    recent += " WHERE key_id = %(key)s AND organization_id = %(org)s{bound} ORDER BY occurred_at DESC, id DESC"
    recent += " LIMIT 50 OFFSET %(offset)s"
    newest = "SELECT max(occurred_at) FROM {t} WHERE key_id = %(key)s{bound}"
    day = "SELECT count(*), sum(latency_ms) FROM {t} WHERE organization_id = %(org)s"
    day += " AND occurred_at >= %(day)s AND occurred_at < %(day)s::timestamptz + interval '1 day'"
    yesterday = (now - timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return {
        "last call, busiest key": (last, {"key": key}),
        "last call, quiet key": (last, {"key": quiet}),
        "recent calls page 1": (recent, {"key": key, "offset": 0}),
        "recent calls page 20": (recent, {"key": key, "offset": 950}),
        "newest time, busiest key": (newest, {"key": key}),
        "an organization's day": (day, {"org": org, "day": yesterday}),
    }


def key_org(cur: Any, key: str) -> str:
    cur.execute("SELECT organization_id FROM usage_none WHERE key_id = %s LIMIT 1", (key,))
    return str(cur.fetchone()[0])


def lower_bound(cur: Any, key: str, need: int) -> datetime | None:
    """The hour from which the key has at least ``need`` calls, as the rollups would say (here: from the plain
    table, which is what usage_key_hourly holds)."""
    cur.execute(
        "SELECT hour FROM (SELECT hour, sum(n) OVER (ORDER BY hour DESC) AS running FROM"
        " (SELECT date_trunc('hour', occurred_at) AS hour, count(*) AS n FROM usage_none WHERE key_id = %s"
        " GROUP BY 1) h) r WHERE running >= %s ORDER BY hour DESC LIMIT 1",
        (key, need),
    )
    row = cur.fetchone()
    return row[0] if row else None


def timed(cur: Any, sql: str, params: dict[str, Any], repeats: int) -> list[float]:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        cur.execute(sql, params)
        if cur.description is not None:
            cur.fetchall()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def planning(cur: Any, sql: str, params: dict[str, Any]) -> float:
    cur.execute("EXPLAIN (SUMMARY) " + sql, params)
    for (line,) in cur.fetchall():
        if line.startswith("Planning Time:"):
            return float(line.split()[2])
    raise AssertionError("no planning time")


def time_reads(url: str, args: argparse.Namespace, now: datetime) -> None:
    conn = connect(url)
    cur = conn.cursor()
    key, quiet, org = busiest(url)
    cases = reads(key, quiet, org, now)
    results: dict[tuple[str, str, bool], list[float]] = {}
    plans: dict[tuple[str, str, bool], float] = {}
    for label, (sql, params) in cases.items():
        params = {**params, "org": key_org(cur, params["key"]) if "key" in params else params["org"]}
        need = 1 + params.get("offset", 0) + (50 if "offset" in params else 0)
        bound = lower_bound(cur, params["key"], need) if "key" in params else None
        for bounded in (False, True) if "key" in params else (False,):
            text = sql.replace("{bound}", " AND occurred_at >= %(bound)s" if bounded else "")
            run_params = {**params, "bound": bound or datetime(1970, 1, 1, tzinfo=UTC)}
            for _ in range(2):  # interleaved: a busy spell of the machine falls on every layout
                for name in LAYOUTS:
                    statement = text.replace("{t}", f"usage_{name}")
                    timed(cur, statement, run_params, 2)  # warm
                    results.setdefault((label, name, bounded), []).extend(
                        timed(cur, statement, run_params, args.repeats // 2)
                    )
                    plans[(label, name, bounded)] = planning(cur, statement, run_params)
    print("\nraw reads, client-side median ms (planning ms), without / with the lower time bound")
    print(f"{'read':28}" + "".join(f"{name:>26}" for name in LAYOUTS))
    for label in cases:
        for bounded in (False, True):
            if (label, "none", bounded) not in results:
                continue
            cells = "".join(
                f"{statistics.median(results[(label, n, bounded)]):>15.2f} ({plans[(label, n, bounded)]:5.2f})  "
                for n in LAYOUTS
            )
            print(f"{label + (' (bounded)' if bounded else ''):28}{cells}")
    conn.close()


def planning_sweep(url: str, now: datetime) -> None:
    """Planning time of the key page's reads against the number of daily partitions (empty), unbounded and with
    the lower bound of the key's newest hour."""
    conn = connect(url)
    cur = conn.cursor()
    print("\nplanning ms of a key's last call / recent calls page 1 / newest time, by daily partitions (empty)")
    print(f"{'':17}{'unbounded':>26}{'bounded':>26}")
    for count in (15, 30, 100, 200, 400, 1000):
        table = f"sweep_{count}"
        days = [(now.date() - timedelta(days=n), now.date() - timedelta(days=n - 1)) for n in range(count)]
        create(cur, table, 1, days)
        index(cur, table, 1)
        key = {"key": "00000000-0000-0000-0000-000000000001", "org": "00000000-0000-0000-0000-000000000002"}
        sql = reads(key["key"], key["key"], key["org"], now)
        line = f"{count:5} partitions:"
        for bound in ("", " AND occurred_at >= %(bound)s"):
            samples = []
            for label in ("last call, busiest key", "recent calls page 1", "newest time, busiest key"):
                text, params = sql[label]
                text = text.replace("{bound}", bound).replace("{t}", table)
                run = {**key, **params, "bound": now - timedelta(hours=1)}
                planning(cur, text, run)
                samples.append(statistics.median(planning(cur, text, run) for _ in range(9)))
            line += "   " + " / ".join(f"{s:6.2f}" for s in samples)
        print(line, flush=True)
        cur.execute(f"DROP TABLE {table}")
    conn.close()


def inserts(url: str, now: datetime) -> None:
    """A 500-row batch like the usage writer's (INSERT ... SELECT unnest), into today's partition."""
    conn = connect(url)
    cur = conn.cursor()
    rows = 500
    print(f"\n{rows}-row insert batches, median ms of 40 (interleaved)")
    cur.execute("CREATE SEQUENCE bench_ids START 10000000000")
    samples: dict[str, list[float]] = {}
    for _ in range(4):
        for name in LAYOUTS:
            statement = (
                f"INSERT INTO usage_{name} (id, key_id, organization_id, occurred_at, endpoint, status_code,"  # noqa: S608
                " latency_ms, outcome, client_ip, user_agent)"
                " SELECT nextval('bench_ids'), md5(g::text)::uuid, md5('o' || (g %% 10)::text)::uuid,"
                " now(), '/v1/translate', 200, 4.2, 'ok', '203.0.113.10', 'procode-python/2.4.1'"
                " FROM generate_series(1, %(rows)s) g"
            )
            samples.setdefault(name, []).extend(timed(cur, statement, {"rows": rows}, 10))
    print("   ".join(f"{name}: {statistics.median(s):.2f}" for name, s in samples.items()))
    conn.close()


def drops(url: str, layouts: dict[str, list[tuple[date, date]]]) -> None:
    """DETACH CONCURRENTLY then DROP of the oldest partition, and the same through one DROP TABLE."""
    conn = connect(url)
    cur = conn.cursor()
    print("\ndropping the oldest partition: rows, size, DETACH CONCURRENTLY + DROP ms; next one by DROP TABLE ms")
    for name, ranges in layouts.items():
        if not ranges:
            continue
        line = f"{name:>5}:"
        for (lo, _), how in zip(ranges[:2], ("detach", "drop"), strict=True):
            part = f"usage_{name}_p{lo:%Y%m%d}"
            cur.execute(f"SELECT count(*), pg_total_relation_size('{part}') FROM {part}")  # noqa: S608
            rows, size = cur.fetchone()
            started = time.perf_counter()
            if how == "detach":
                cur.execute(f"ALTER TABLE usage_{name} DETACH PARTITION {part} CONCURRENTLY")
            cur.execute(f"DROP TABLE {part}")
            line += f"  {rows:>10,} rows {size / 2**20:7.1f} MB {how} {(time.perf_counter() - started) * 1000:7.1f} ms"
        print(line)
    conn.close()


def run(steps: list[Callable[[], None]]) -> None:
    for step in steps:
        step()


def main() -> int:
    args = parse_args()
    admin = bench_server_url()
    name = f"procode_bench_partitions_{secrets.token_hex(3)}"
    conn = connect(admin)
    conn.cursor().execute(f'CREATE DATABASE "{name}"')
    conn.close()
    url = with_db(admin, name)
    now = datetime.now(UTC)
    try:
        layouts = load(url, args, now)
        run(
            [
                lambda: time_reads(url, args, now),
                lambda: planning_sweep(url, now),
                lambda: inserts(url, now),
                lambda: drops(url, layouts),
            ]
        )
    finally:
        if args.keep:
            print(f"kept: {url}")
        else:
            conn = connect(admin)
            conn.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
