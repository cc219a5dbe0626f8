"""What migration 0022 costs a live database: converting 10M usage rows into daily partitions while a usage
writer keeps inserting, and the downgrade back.

    .venv/bin/python bench/usage_migration.py                   # 10M events over 30 days; about 15 minutes
    .venv/bin/python bench/usage_migration.py --events 1000000  # a quicker run

Steps: a fresh database on BENCH_DATABASE_URL migrated to 0021; the events inserted through the rollup triggers
(the simulator's generator, folded per chunk); then, while a writer thread inserts a batch of 200 rows every
100 ms as the usage writers do, `flask db upgrade` to 0022, and after it the downgrade to 0021. Prints each
phase's time (the migration logs when its copy ends and how long it held ACCESS EXCLUSIVE), the writer's
longest wait and the rows and rollups before and after, which must match.
"""

from __future__ import annotations

import argparse
import logging
import secrets
import statistics
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402
from flask_migrate import downgrade, upgrade  # noqa: E402

from bench.harness import bench_server_url  # noqa: E402
from portal import create_app  # noqa: E402
from portal.db import ensure_database, normalize_url  # noqa: E402
from portal.extensions import db  # noqa: E402
from portal.timeutil import utcnow  # noqa: E402
from portal.usage.simulate import SIMULATE_SQL  # noqa: E402

WRITER_BATCH, WRITER_PAUSE = 200, 0.1
WRITE_SQL = sa.text(
    "INSERT INTO api_key_usage (key_id, organization_id, endpoint, status_code, latency_ms, outcome)"
    " SELECT k.id, k.organization_id, '/bench/writer', 200, 1.0, 'ok'"
    " FROM (SELECT id, organization_id FROM api_keys LIMIT 1) k, generate_series(1, :n)"
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--days", type=float, default=30)
    parser.add_argument("--keys", type=int, default=1_000)
    parser.add_argument("--keep", action="store_true")
    return parser.parse_args()


class Writer(threading.Thread):
    """Inserts a batch every 100 ms and notes how long each took."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.engine = sa.create_engine(url)
        self.stop = threading.Event()
        self.waits: list[tuple[float, float]] = []  # (started, seconds)
        self.errors: list[str] = []
        self.rows = 0

    def run(self) -> None:
        with self.engine.connect() as conn:
            while not self.stop.is_set():
                started = time.perf_counter()
                try:
                    conn.execute(WRITE_SQL, {"n": WRITER_BATCH})
                    conn.commit()
                    self.rows += WRITER_BATCH
                except sa.exc.DBAPIError as exc:
                    conn.rollback()
                    self.errors.append(str(exc.orig).splitlines()[0])
                self.waits.append((started, time.perf_counter() - started))
                time.sleep(WRITER_PAUSE)
        self.engine.dispose()


def fill(url: str, events: int, days: float, key_count: int) -> None:
    engine = sa.create_engine(url)
    now = utcnow()
    with engine.connect() as conn:
        org = conn.scalar(
            sa.text("INSERT INTO organizations (name, slug, plan) VALUES ('M', 'm', 'enterprise') RETURNING id")
        )
        keys = [
            str(k)
            for k in conn.scalars(
                sa.text(
                    "INSERT INTO api_keys (organization_id, name, environment, hint, key_hash)"
                    " SELECT :o, 'k' || i, 'live', 'pk_live_…' || i, decode(md5(i::text) || md5(i::text), 'hex')"
                    " FROM generate_series(1, :n) i RETURNING id"
                ),
                {"o": org, "n": key_count},
            )
        ]
        conn.commit()
        params = {
            "keys": keys,
            "orgs": [str(org)] * len(keys),
            "nkeys": len(keys),
            "start": now - timedelta(days=days),
            "now": now,
            "step": days * 86_400 / events,
        }
        started = time.perf_counter()
        for lo in range(0, events, 500_000):
            conn.execute(SIMULATE_SQL, {**params, "lo": lo, "hi": min(lo + 500_000, events)})
            conn.commit()
            conn.execute(sa.text("SELECT usage_rollup_fold(), usage_clients_fold()"))
            conn.commit()
        print(f"filled: {events:,} events at revision 0021 in {time.perf_counter() - started:.0f} s", flush=True)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE api_key_usage, usage_rollup_pending, usage_client_pending"))
    engine.dispose()


def counts(url: str) -> tuple[int, int, int]:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT usage_rollup_fold()"))
        raw = conn.scalar(sa.text("SELECT count(*) FROM api_key_usage"))
        rolled = conn.scalar(sa.text("SELECT sum(calls) FROM usage_org_hourly"))
        max_id = conn.scalar(sa.text("SELECT max(id) FROM api_key_usage"))
    engine.dispose()
    return int(raw), int(rolled), int(max_id)


class Timings(logging.Handler):
    """The migration's own log lines, with when they came."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((time.perf_counter(), record.getMessage()))


def migrate(url: str, step: str) -> None:
    writer = Writer(url)
    timings = Timings()
    logging.getLogger("alembic.runtime.migration").addHandler(timings)
    app = create_app({"SQLALCHEMY_DATABASE_URI": url}, env="testing")
    before = counts(url)
    writer.start()
    time.sleep(1)
    started = time.perf_counter()
    with app.app_context():
        upgrade(revision="0022") if step == "upgrade" else downgrade(revision="0021")
        db.engine.dispose()
    took = time.perf_counter() - started
    time.sleep(1)
    writer.stop.set()
    writer.join()
    logging.getLogger("alembic.runtime.migration").removeHandler(timings)
    after = counts(url)
    during = [s for t, s in writer.waits if started <= t <= started + took]
    worst = max(writer.waits, key=lambda w: w[1])
    print(f"{step}: {took:.1f} s in all")
    for at, line in timings.lines:
        if "0022:" in line:
            print(f"  {at - started:7.1f} s  {line}")
    median = statistics.median(during) * 1000
    print(
        f"  writer: {len(during)} batches of {WRITER_BATCH} during the {step}, median {median:.1f} ms,"
        f" longest {worst[1] * 1000:.0f} ms (at {worst[0] - started:.1f} s), errors: {writer.errors or 'none'}"
    )
    equal = after[0] == before[0] + writer.rows and after[1] == after[0]
    print(
        f"  rows {before[0]:,} -> {after[0]:,} (writer added {writer.rows:,});"
        f" rollup calls {before[1]:,} -> {after[1]:,}; equal: {equal}",
        flush=True,
    )


def main() -> int:
    args = parse_args()
    admin = normalize_url(bench_server_url())
    name = f"procode_bench_migration_{secrets.token_hex(3)}"
    ensure_database(admin, name)
    url = sa.make_url(admin).set(database=name).render_as_string(hide_password=False)
    try:
        app = create_app({"SQLALCHEMY_DATABASE_URI": url}, env="testing")
        with app.app_context():
            upgrade(revision="0021")
            db.engine.dispose()
        fill(url, args.events, args.days, args.keys)
        migrate(url, "upgrade")
        migrate(url, "downgrade")
    finally:
        if args.keep:
            print(f"kept: {url}")
        else:
            engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT")
            with engine.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
