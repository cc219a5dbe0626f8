"""Ingest through `flask usage simulate` with the rollup folds in lanes (migration 0023) against one folder at a
time (the functions of 0022, the baseline), interleaved in one process on one database.

    .venv/bin/python bench/fold_lanes.py                  # 2M events per run, 3 runs per side; about 5 minutes
    .venv/bin/python bench/fold_lanes.py --jobs 4         # on a machine with cores to spare

A fresh database on BENCH_DATABASE_URL (else 127.0.0.1:5432, else an embedded server) with ``--orgs``
organizations of ``--keys`` keys each. Each run empties the usage tables, puts the side's fold functions in
place (``flask db downgrade 0022`` for the baseline, ``upgrade`` for lanes: only functions change), and inserts
``--events`` calls over ``--days`` days through :func:`portal.usage.simulate.simulate` with ``--jobs``
connections, chunks of 500,000: the baseline's jobs fold everything after each chunk and wait for each other's
fold; with lanes each folds its own share of the lanes. Prints events/s and the PostgreSQL server's CPU per
event (its processes, and the backends that ended, through the postmaster's children's time) for every run.

Targets: lanes' events/s (mean) at least the baseline's, and PostgreSQL's CPU per event within 5 % of it.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import psycopg2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import admin, log, server_url, with_db  # noqa: E402

USAGE_TABLES = (
    "api_key_usage, usage_rollup_pending, usage_client_pending, usage_org_hourly, usage_key_hourly, "
    "usage_key_daily, usage_endpoint_hourly, usage_key_endpoint_daily, usage_key_clients_hourly, "
    "usage_key_clients_daily"
)


def server_cpu(url: str) -> float:
    """CPU seconds of the PostgreSQL server so far: the postmaster, its live children, and (through the
    postmaster's children's time) every backend that has ended."""
    conn = psycopg2.connect(url)
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        (backend,) = cur.fetchone()
    conn.close()
    fields = Path(f"/proc/{backend}/stat").read_text().rsplit(")", 1)[1].split()
    postmaster = int(fields[1])
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry) == postmaster:
            total += sum(int(v) for v in stat[11:15])  # its own and its reaped children's time
        elif int(stat[1]) == postmaster:
            total += int(stat[11]) + int(stat[12])
    return total / os.sysconf("SC_CLK_TCK")


def run_side(
    url: str, side: str, args: argparse.Namespace, orgs: list[Any], lanes: tuple[Any, Any]
) -> dict[str, float]:
    """One run of ``side`` ("lanes" or "one folder"): the side's functions in place, empty usage tables, then
    ``args.events`` simulated calls; returns events/s and server CPU per event. ``lanes``: simulate's own fold
    statement and shares, put back for the lanes side."""
    import sqlalchemy as sa
    from flask_migrate import downgrade, upgrade

    from portal.extensions import db
    from portal.usage import simulate

    if side == "lanes":
        upgrade()
        simulate.FOLD_LANES_SQL, simulate.maintenance.lanes_of = lanes
    else:
        downgrade(revision="0022")
        simulate.FOLD_LANES_SQL = sa.text(
            "SELECT usage_rollup_fold(), usage_clients_fold(), CAST(:lanes AS int[]) IS NOT NULL"
        )
        simulate.maintenance.lanes_of = lambda job, jobs: []
    with db.engine.begin() as conn:
        conn.execute(sa.text(f"TRUNCATE {USAGE_TABLES}"))  # noqa: S608 -- constants only
    db.session.remove()
    cpu, started = server_cpu(url), time.monotonic()
    simulate.simulate(orgs, args.events, days=args.days, key_count=args.keys, chunk=500_000, jobs=args.jobs)
    seconds, cpu = time.monotonic() - started, server_cpu(url) - cpu
    result = {"rate": args.events / seconds, "cpu_us": cpu / args.events * 1e6}
    log(f"{side:>10}: {result['rate']:>9,.0f} events/s in {seconds:.1f} s, PostgreSQL {result['cpu_us']:.1f} µs/event")
    return result


def main() -> None:
    """Both sides' runs, interleaved, on a fresh database dropped afterwards; then the report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--orgs", type=int, default=1_000)
    parser.add_argument("--keys", type=int, default=10, help="keys per organization")
    parser.add_argument("--days", type=float, default=2)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="runs per side, interleaved (ABBA…)")
    args = parser.parse_args()

    import sqlalchemy as sa
    from flask_migrate import upgrade

    from portal import create_app
    from portal.extensions import db
    from portal.models import Organization
    from portal.usage import simulate

    lanes = (simulate.FOLD_LANES_SQL, simulate.maintenance.lanes_of)
    admin_url, tmp = server_url()
    name = f"procode_bench_lanes_{secrets.token_hex(4)}"
    admin(admin_url, f'CREATE DATABASE "{name}"')
    url = with_db(admin_url, name)
    results: dict[str, list[dict[str, float]]] = {"one folder": [], "lanes": []}
    try:
        app = create_app({"SQLALCHEMY_DATABASE_URI": url}, env="testing")
        with app.app_context():
            upgrade()
            with db.engine.begin() as conn:
                conn.execute(
                    sa.text(
                        "INSERT INTO organizations (name, slug, plan)"
                        " SELECT 'Org ' || i, 'org-' || i, 'pro' FROM generate_series(1, :n) i"
                    ),
                    {"n": args.orgs},
                )
            orgs = list(db.session.scalars(sa.select(Organization).order_by(Organization.slug)))
            log(f"{args.orgs:,} organizations × {args.keys} keys, {args.events:,} events per run, {args.jobs} jobs")
            order = ["lanes", "one folder", "one folder", "lanes"] * args.rounds
            for side in order[: 2 * args.rounds]:
                results[side].append(run_side(url, side, args, orgs, lanes))
            upgrade()
            db.engine.dispose()
    finally:
        admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if tmp is not None:
            tmp.cleanup()
    report(results)


def report(results: dict[str, list[dict[str, float]]]) -> None:
    """Every run, the ratios of the means, a PASS/FAIL line per target; the exit status follows the targets."""
    base, lanes = results["one folder"], results["lanes"]
    rate = statistics.mean(r["rate"] for r in lanes) / statistics.mean(r["rate"] for r in base)
    cpu = statistics.mean(r["cpu_us"] for r in lanes) / statistics.mean(r["cpu_us"] for r in base)
    for side, runs in results.items():
        rates = ", ".join(f"{r['rate']:,.0f}" for r in runs)
        cpus = ", ".join(f"{r['cpu_us']:.1f}" for r in runs)
        print(f"{side:>10}: events/s {rates}; PostgreSQL µs/event {cpus}")
    print(f"lanes ÷ one folder: events/s {rate:.2f}, PostgreSQL CPU per event {cpu:.2f}")
    print(f"{'PASS' if rate >= 1.0 else 'FAIL'}  lanes' events/s at least one folder's ({rate:.2f})")
    print(f"{'PASS' if cpu <= 1.05 else 'FAIL'}  lanes' PostgreSQL CPU per event within 5 % ({cpu:.2f})")
    sys.exit(0 if rate >= 1.0 and cpu <= 1.05 else 1)


if __name__ == "__main__":
    main()
