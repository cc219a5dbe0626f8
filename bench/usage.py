"""Usage pages at scale: 10M events over 1,000 keys and 30 days, dashboard and key page vs a raw GROUP BY.

    make bench-usage                      # PostgreSQL at 127.0.0.1:5432 (BENCH_DATABASE_URL), a fresh database
    .venv/bin/python bench/usage.py --events 1000000 --requests 30   # a quicker run
    make bench-usage BENCH_ARGS="--scale" # 100M events, 10,000 keys, 1,000 organizations, 90 days (usage_scale.py)

Steps: create a fresh database and migrate it; one enterprise organization with an owner; ``simulate``
10M calls (the same bulk path as ``flask usage simulate``, through the rollup trigger); start gunicorn on
loopback (ports 18200-18299); sign in over HTTP like a browser; time the dashboard and the key page (p50/p95
of sequential requests, measured by the client); time the same numbers computed by a raw GROUP BY over the
events; check that rollups equal the raw events. Prints the ratios and whether the targets hold.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402
from flask import Flask  # noqa: E402

from bench import usage_scale  # noqa: E402
from bench.harness import Browser, bench_server_url, free_ports, pct  # noqa: E402
from portal import create_app  # noqa: E402
from portal.db import ensure_database, normalize_url  # noqa: E402
from portal.extensions import db  # noqa: E402

EMAIL, PASSWORD = "bench@procode.dev", "bench-password-123"
BENCH_SECRET, BENCH_PEPPER = "bench-only-secret-" + "s" * 32, "bench-only-pepper-" + "p" * 32
TARGET_P95_MS, TARGET_RATIO = 50.0, 20.0

RAW_DASHBOARD = [
    """SELECT date_trunc('day', u.occurred_at, 'UTC') AS day, coalesce(k.environment, 'none') AS env,
              u.outcome,
              count(*), sum(u.latency_ms)
       FROM api_key_usage u LEFT JOIN api_keys k ON k.id = u.key_id
       WHERE u.organization_id = :org AND u.occurred_at >= :start AND u.occurred_at < :end
       GROUP BY 1, 2, 3""",
    """SELECT key_id, count(*), count(*) FILTER (WHERE outcome = 'ok'),
              count(*) FILTER (WHERE outcome = 'rate_limited')
       FROM api_key_usage WHERE organization_id = :org AND occurred_at >= :start AND occurred_at < :end
       GROUP BY key_id ORDER BY 2 DESC LIMIT 10""",
    """SELECT endpoint, count(*), count(*) FILTER (WHERE outcome <> 'ok') FROM api_key_usage
       WHERE organization_id = :org AND occurred_at >= :start AND occurred_at < :end
       GROUP BY endpoint ORDER BY 2 DESC LIMIT 10""",
    """SELECT count(*) FILTER (WHERE outcome = 'ok' AND occurred_at >= :month),
              count(*) FILTER (WHERE occurred_at >= :month),
              count(*) FILTER (WHERE outcome = 'ok' AND occurred_at >= :week)
       FROM api_key_usage WHERE organization_id = :org AND occurred_at >= least(:month, :week)""",
]
RAW_KEY = [
    """SELECT date_trunc('day', occurred_at, 'UTC'), outcome, count(*), sum(latency_ms) FROM api_key_usage
       WHERE key_id = :key AND occurred_at >= :start AND occurred_at < :end GROUP BY 1, 2""",
    """SELECT endpoint, count(*), count(*) FILTER (WHERE outcome <> 'ok') FROM api_key_usage
       WHERE key_id = :key AND occurred_at >= :start AND occurred_at < :end
       GROUP BY 1 ORDER BY 2 DESC LIMIT 10""",
]
RAW_CLIENTS = [
    """SELECT client_ip, user_agent, count(*), min(occurred_at), max(occurred_at) FROM api_key_usage
       WHERE key_id = :key AND occurred_at >= :start GROUP BY 1, 2 ORDER BY 5 DESC LIMIT 50""",
    """SELECT occurred_at, client_ip, user_agent, endpoint FROM api_key_usage
       WHERE key_id = :key ORDER BY occurred_at DESC LIMIT 1""",
]


def timed_pages(browser: Browser, path: str, requests: int) -> list[float]:
    for _ in range(3):  # warm up both workers
        browser.request("GET", path)
    samples = []
    for _ in range(requests):
        status, _, elapsed = browser.request("GET", path)
        if status != 200:
            raise SystemExit(f"{path} answered {status}")
        samples.append(elapsed)
    return samples


def timed_raw(url: str, statements: list[str], params: dict[str, Any], repeats: int) -> list[float]:
    engine = sa.create_engine(url)
    samples = []
    with engine.connect() as conn:
        for _ in range(repeats):
            started = time.perf_counter()
            for statement in statements:
                conn.execute(sa.text(statement), params).all()
            samples.append((time.perf_counter() - started) * 1000)
            conn.rollback()
    engine.dispose()
    return samples


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=None, help="10,000,000; 100,000,000 with --scale")
    parser.add_argument("--keys", type=int, default=1_000)
    parser.add_argument("--days", type=float, default=30)
    parser.add_argument(
        "--scale",
        action="store_true",
        help="100M events over 10,000 keys in 1,000 organizations across 90 days, with the ingest and drop targets",
    )
    parser.add_argument("--jobs", type=int, default=2, help="connections loading at once in --scale")
    parser.add_argument("--requests", type=int, default=100, help="timed requests per page")
    parser.add_argument("--raw-repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards (prints its URL)")
    args = parser.parse_args()
    if args.events is None:
        args.events = usage_scale.EVENTS if args.scale else 10_000_000
    if args.scale:
        args.keys, args.days = usage_scale.ORGS * usage_scale.KEYS_PER_ORG, usage_scale.DAYS
    return args


def create_database(admin: str) -> tuple[str, str]:
    """A fresh database on the benchmark server: its name and URL."""
    name = f"procode_bench_usage_{secrets.token_hex(3)}"
    ensure_database(admin, name)
    url = sa.make_url(admin).set(database=name).render_as_string(hide_password=False)
    print(f"database: {sa.make_url(url).render_as_string(hide_password=True)}")
    return name, url


def drop_database(admin: str, name: str) -> None:
    engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


def build_app(url: str) -> Flask:
    return create_app(
        {"SQLALCHEMY_DATABASE_URI": url, "SECRET_KEY": BENCH_SECRET, "API_KEY_PEPPER": BENCH_PEPPER},
        env="production",
    )


def load_events(args: argparse.Namespace) -> tuple[uuid.UUID, usage_scale.Loaded | None]:
    """Migrate, create the owner and the organization(s), simulate the events; returns the busiest organization's
    id (and in --scale, how the load went)."""
    from flask_migrate import upgrade

    from portal.auth import services as auth
    from portal.orgs.services import create_organization
    from portal.usage import simulate as sim

    upgrade()
    owner = auth.create_user(EMAIL, "Bench Owner", PASSWORD)
    if args.scale:
        started = time.perf_counter()
        loaded = usage_scale.load(owner, args.events, args.jobs)
        load_s = time.perf_counter() - started
        started = time.perf_counter()
        sim.vacuum_analyze(raw=False)
        print(
            f"load: {args.events:,} events over {args.keys:,} keys in {usage_scale.ORGS:,} organizations and"
            f" {args.days:g} days in {load_s:.0f} s ({args.events / load_s:,.0f}/s), VACUUM ANALYZE (rollups;"
            f" ANALYZE of the raw events) {time.perf_counter() - started:.0f} s",
            flush=True,
        )
        return loaded.org_id, loaded
    org = create_organization("Bench Corp", owner, plan="enterprise", slug="bench")
    db.session.commit()
    org_id = org.id
    started = time.perf_counter()
    done = [0]

    def progress(n: int) -> None:
        done[0] += n
        if done[0] % 1_000_000 < n or done[0] == args.events:
            print(
                f"  simulated {done[0]:>11,} events  {time.perf_counter() - started:6.1f} s",
                flush=True,
            )

    sim.simulate(org, args.events, args.days, key_count=args.keys, progress=progress)
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    sim.vacuum_analyze()
    vacuum_s = time.perf_counter() - started
    print(
        f"load: {args.events:,} events over {args.keys:,} keys and {args.days:g} days"
        f" in {load_s:.1f} s "
        f"({args.events / load_s:,.0f}/s), VACUUM ANALYZE {vacuum_s:.1f} s"
    )
    return org_id, None


def busiest_key(org_id: uuid.UUID) -> Any:
    """The key with the most calls: the key page the benchmark times."""
    return db.session.scalar(
        sa.text(
            "SELECT key_id FROM usage_key_daily WHERE organization_id = :o GROUP BY 1 ORDER BY sum(calls) DESC LIMIT 1"
        ),
        {"o": org_id},
    )


def print_table_sizes(events: int) -> None:
    sizes: dict[str, str] = dict(
        db.session.execute(
            sa.text(
                "SELECT 'api_key_usage', pg_size_pretty(sum(pg_total_relation_size(relid)))"
                " FROM pg_partition_tree('api_key_usage') UNION ALL"
                " SELECT relname, pg_size_pretty(pg_total_relation_size(oid)) FROM pg_class"
                " WHERE relname IN"
                " ('usage_org_hourly', 'usage_key_hourly', 'usage_key_daily',"
                " 'usage_endpoint_hourly', 'usage_key_endpoint_daily', 'usage_key_clients_hourly',"
                " 'usage_key_clients_daily')"
            )
        ).all()
    )
    rows: dict[str, int] = dict(
        db.session.execute(
            sa.text("SELECT relname, reltuples::bigint FROM pg_class WHERE relname LIKE 'usage_%' AND relkind = 'r'")
        ).all()
    )
    print("sizes: " + ", ".join(f"{k} {v} ({rows.get(k, events):,} rows)" for k, v in sizes.items()))


def start_gunicorn(url: str, workers: int) -> tuple[subprocess.Popen[bytes], int]:
    """gunicorn with the shipped gunicorn.conf.py on a free loopback port in 18200-18299, once it accepts."""
    [port] = free_ports(1, range(18200, 18300))
    env = {
        **os.environ,
        "PORTAL_ENV": "production",
        "DATABASE_URL": url,
        "SECRET_KEY": BENCH_SECRET,
        "API_KEY_PEPPER": BENCH_PEPPER,
    }
    gunicorn = subprocess.Popen(  # noqa: S603
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            "gunicorn.conf.py",  # the shipped settings (gevent workers), as a deployment runs
            "-w",
            str(workers),
            "-b",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
            "wsgi:app",
        ],
        cwd=ROOT,
        env=env,
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    return gunicorn, port


def stop_gunicorn(gunicorn: subprocess.Popen[bytes]) -> None:
    gunicorn.send_signal(signal.SIGTERM)
    gunicorn.wait(timeout=30)


Case = tuple[str, str, list[str], dict[str, Any]]


def page_cases(org_id: uuid.UUID, top_key: Any) -> list[Case]:
    """Each timed page: its label, its path, and the raw statements that compute the same numbers."""
    now = datetime.now(UTC)
    end = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return [
        (
            "dashboard, 30 days by day",
            "/orgs/bench/usage?range=30d&bucket=day",
            RAW_DASHBOARD,
            {
                "org": org_id,
                "start": end - timedelta(days=30),
                "end": end,
                "month": month,
                "week": now - timedelta(days=7),
            },
        ),
        (
            "dashboard, 7 days by hour",
            "/orgs/bench/usage?range=7d&bucket=hour",
            RAW_DASHBOARD,
            {
                "org": org_id,
                "start": end - timedelta(days=7),
                "end": end,
                "month": month,
                "week": now - timedelta(days=7),
            },
        ),
        (
            "key page, 30 days by day",
            f"/orgs/bench/keys/{top_key}/usage?range=30d&bucket=day",
            RAW_KEY,
            {"key": top_key, "start": end - timedelta(days=30), "end": end},
        ),
        (
            "key page, clients 30 days",
            f"/orgs/bench/keys/{top_key}?clients=30d",
            RAW_CLIENTS,
            {"key": top_key, "start": now - timedelta(days=30)},
        ),
    ]


Result = tuple[str, list[float], list[float]]


def time_cases(browser: Browser, url: str, cases: list[Case], args: argparse.Namespace) -> list[Result]:
    """Each page as the client sees it, then its raw GROUP BY; prints one line per case."""
    results = []
    for label, path, raw, params in cases:
        page = timed_pages(browser, path, args.requests)
        raw_ms = timed_raw(url, raw, params, args.raw_repeats)
        results.append((label, page, raw_ms))
        speedup = statistics.median(raw_ms) / statistics.median(page)
        print(
            f"{label:28} app p50 {pct(page, 0.5):7.1f} ms  p95 {pct(page, 0.95):7.1f} ms"
            f"  |  raw GROUP BY p50 {pct(raw_ms, 0.5):8.1f} ms  p95 {pct(raw_ms, 0.95):8.1f} ms"
            f"  |  {speedup:6.1f}x faster",
            flush=True,
        )
    return results


def check_totals(org_id: uuid.UUID) -> tuple[int, int, Any]:
    """Raw events against rollup calls, and every rollup row against the raw aggregation (printed)."""
    from portal.usage import maintenance

    raw_total = db.session.scalar(
        sa.text("SELECT count(*) FROM api_key_usage WHERE organization_id = :o"), {"o": org_id}
    )
    rollup_total = db.session.scalar(
        sa.text("SELECT sum(calls) FROM usage_org_hourly WHERE organization_id = :o"), {"o": org_id}
    )
    started = time.perf_counter()
    mismatches = maintenance.rollup_mismatches(org_id)
    check_s = time.perf_counter() - started
    print(
        f"totals: raw {raw_total:,} events, rollups {rollup_total:,} calls; every rollup row equals"
        f" the raw aggregation: {mismatches or 'yes'} (checked in {check_s:.0f} s)"
    )
    return raw_total, rollup_total, mismatches


def verdict(results: list[Result], raw_total: int, rollup_total: int, mismatches: Any, events: int | None) -> bool:
    """Whether the targets hold (printed): the worst dashboard's or key page's p95, the dashboards' speed-up,
    equal totals."""
    dashboards = [(page, raw_ms) for label, page, raw_ms in results if label.startswith("dashboard")]
    dashboard_p95 = max(pct(page, 0.95) for _, page, _ in results)  # the worst page
    ratio = min(statistics.median(raw_ms) / statistics.median(page) for page, raw_ms in dashboards)
    ok = dashboard_p95 <= TARGET_P95_MS and ratio >= TARGET_RATIO and raw_total == rollup_total
    ok = ok and (events is None or raw_total == events)
    ok = ok and not mismatches
    print(
        f"targets: worst page p95 {dashboard_p95:.1f} ms (<= {TARGET_P95_MS:.0f}),"
        f" {ratio:.0f}x faster than raw"
        f" (>= {TARGET_RATIO:.0f}x), totals equal -> {'PASS' if ok else 'FAIL'}"
    )
    return ok


def main() -> int:
    args = parse_args()
    admin = normalize_url(bench_server_url())
    if not usage_scale.check_disk(admin, args.events):
        return 2
    name, url = create_database(admin)
    gunicorn = None
    try:
        app = build_app(url)
        with app.app_context():
            org_id, loaded = load_events(args)
            top_key = busiest_key(org_id)
            print_table_sizes(args.events)

        gunicorn, port = start_gunicorn(url, args.workers)
        browser = Browser(port)
        browser.login(EMAIL, PASSWORD)
        print(
            f"gunicorn: {args.workers} workers (gunicorn.conf.py settings) on 127.0.0.1:{port};"
            f" {args.requests} sequential requests each",
            flush=True,
        )
        results = time_cases(browser, url, page_cases(org_id, top_key), args)
        stop_gunicorn(gunicorn)
        gunicorn = None
        with app.app_context():
            raw_total, rollup_total, mismatches = check_totals(org_id)
            usage_scale.disk_report(args.events)
            ok = verdict(results, raw_total, rollup_total, mismatches, None if args.scale else args.events)
            if loaded is not None:
                drop_s, victim = usage_scale.time_drop()
                ok = usage_scale.verdict(loaded, drop_s, victim) and ok
        return 0 if ok else 1
    finally:
        if gunicorn is not None:
            stop_gunicorn(gunicorn)
        if args.keep:
            print(f"kept: {url}")
        else:
            drop_database(admin, name)


if __name__ == "__main__":
    raise SystemExit(main())
