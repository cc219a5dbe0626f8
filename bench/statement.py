"""pgbench of the verification statement alone, against an earlier revision's (not part of the test suite).

Builds a scratch database (migrated by the app) with three kinds of keys, then runs ``pgbench -M prepared``
(4 clients, autocommit, the verification connection's settings) on the statement of ``portal/verification/sql.py``
and on the one of ``--baseline`` (a git revision), interleaved round by round because a shared machine is noisy:

- ``paid``: keys on Pro organizations without a limit of their own (one in nine has scopes): the common case;
- ``free``: keys on Free organizations (the plan stops calls at its monthly quota);
- ``keylim``: keys on Pro organizations with a requests-per-minute limit of their own.

Each case runs as one call and as a group of 8 random keys. ``old`` is the baseline revision's statement,
``one`` the one-statement policy limiter of ``--policy``, ``new`` what the backend runs now: the first
statement for ``paid`` keys, the second (counters) statement for the others, which a worker sends them to
directly once it has seen them deferred.
Counters are emptied before every run, and limits are high enough that calls are admitted, so every run
measures the admitting path. Usage: ``python bench/statement.py [--seconds 10] [--rounds 2] [--baseline REV]``.
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import psycopg2
import psycopg2.extras

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import admin, log, server_url, with_db  # noqa: E402
from bench.verify import migrate  # noqa: E402
from portal.keys import format as keyformat  # noqa: E402
from portal.verification import sql  # noqa: E402

PEPPER = "bench-pepper-" + secrets.token_hex(16)
PRO_ORGS, KEYS_PER_ORG, FREE_ORGS = 1000, 10, 2000
GROUP = 8


def seed(url: str) -> dict[str, int]:
    """Pro organizations with 10 keys (the last with its own limit) and Free organizations with one key each."""
    conn = psycopg2.connect(url)
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO organizations (name, slug, plan) SELECT 'Bench ' || i, 'bench-' || i, "
            "CASE WHEN i <= %s THEN 'pro' ELSE 'free' END FROM generate_series(1, %s) i",
            (PRO_ORGS, PRO_ORGS + FREE_ORGS),
        )
        cur.execute("SELECT id, plan FROM organizations ORDER BY (substr(slug, 7))::int")
        tables: dict[str, list[bytes]] = {"paid": [], "free": [], "keylim": []}
        rows = []
        for org_id, plan in cur.fetchall():
            for n in range(KEYS_PER_ORG if plan == "pro" else 1):
                key_hash = keyformat.key_hash(keyformat.generate("live"), PEPPER)
                kind = "free" if plan == "free" else "keylim" if n == KEYS_PER_ORG - 1 else "paid"
                scopes = ["read", "write"] if kind == "paid" and n == 0 else None
                limit = 100_000 if kind == "keylim" else None
                rows.append((org_id, f"key {n}", "live", "hint", key_hash, scopes, limit))
                tables[kind].append(key_hash)
        psycopg2.extras.execute_values(
            cur,
            "INSERT INTO api_keys (organization_id, name, environment, hint, key_hash, scopes, rate_limit) VALUES %s",
            rows,
            page_size=2000,
        )
        for kind, hashes in tables.items():
            cur.execute(f"CREATE TABLE bench_{kind} (id int PRIMARY KEY, key_hash bytea NOT NULL)")
            psycopg2.extras.execute_values(
                cur,
                f"INSERT INTO bench_{kind} VALUES %s",  # noqa: S608 - our own table names
                list(enumerate(hashes, 1)),
                page_size=2000,
            )
    conn.commit()
    conn.close()
    return {kind: len(hashes) for kind, hashes in tables.items()}


def revision_sql(rev: str) -> types.ModuleType:
    """``portal/verification/sql.py`` as it was at ``rev``."""
    text = subprocess.run(
        ["git", "show", f"{rev}:portal/verification/sql.py"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    module = types.ModuleType(f"sql_{rev}")
    exec(compile(text, f"{rev}:portal/verification/sql.py", "exec"), module.__dict__)  # noqa: S102 - our own code
    return module


def script(module: types.ModuleType, kind: str, count: int, group: int, policy: bool) -> str:
    """A pgbench script: one verification of one random key of ``kind``, or of ``group`` random keys."""
    if group == 1:
        sets = f"\\set a random(1, {count})\n"
        key = f"(SELECT key_hash FROM bench_{kind} WHERE id = :a)"  # noqa: S608 - our own table names
        statement = module.verify_statement(key, "NULL", "NULL") if policy else module.verify_statement(key)
        if policy and kind != "paid" and hasattr(module, "verify_counters_statement"):
            statement = module.verify_counters_statement(key, "NULL", "NULL")
    else:
        names = [f"a{i}" for i in range(group)]
        sets = "".join(f"\\set {n} random(1, {count})\n" for n in names)
        ids = ", ".join(f":{n}::int" for n in names)
        keys = f"ARRAY(SELECT key_hash FROM bench_{kind} b JOIN unnest(ARRAY[{ids}]) AS u(id) USING (id))"  # noqa: S608
        if policy:
            nulls = f"array_fill(NULL::text, ARRAY[{group}])", f"array_fill(NULL::inet, ARRAY[{group}])"
            statement = module.verify_group_statement(keys, *nulls)
            if kind != "paid" and hasattr(module, "verify_counters_group_statement"):
                statement = module.verify_counters_group_statement(keys, *nulls)
        else:
            statement = module.verify_group_statement(keys)
    return sets + statement.strip() + ";\n"


def pgbench(url: str, path: Path, seconds: int, clients: int) -> float:
    admin(url, "TRUNCATE rate_limit_tracking")
    env = {**os.environ, "PGOPTIONS": "-c synchronous_commit=off -c plan_cache_mode=force_generic_plan"}
    out = subprocess.run(
        ["pgbench", "-n", "-M", "prepared", "-c", str(clients), "-j", "2", "-T", str(seconds), "-f", str(path), url],
        env=env,
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise SystemExit(f"pgbench failed:\n{out.stdout}\n{out.stderr}")
    return float(next(line.split("=")[1].split()[0] for line in out.stdout.splitlines() if line.startswith("tps")))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--baseline", default="835bd0b^1", help="git revision whose statement is the baseline")
    parser.add_argument("--policy", default="d52f962", help="git revision of the one-statement policy limiter")
    parser.add_argument("--url", help="an already seeded database (--keep of an earlier run)")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database")
    args = parser.parse_args()
    old, one = revision_sql(args.baseline), revision_sql(args.policy)
    admin_url, _tmp = server_url()
    name = None
    url = args.url
    if url is None:
        name = f"procode_stmt_{secrets.token_hex(4)}"
        admin(admin_url, f'CREATE DATABASE "{name}"')
        url = with_db(admin_url, name)
    workdir = Path(tempfile.mkdtemp(prefix="procode-stmt-"))
    try:
        if name is not None:
            log(f"database {name}: migrating and seeding")
            migrate(url)
            counts = seed(url)
        else:
            conn = psycopg2.connect(url)
            with conn.cursor() as cur:
                counts = {}
                for kind in ("paid", "free", "keylim"):
                    cur.execute(f"SELECT count(*) FROM bench_{kind}")  # noqa: S608 - our own table names
                    counts[kind] = cur.fetchone()[0]
            conn.close()
        cases = []
        for group in (1, GROUP):
            cases.append((f"old   paid   x{group}", old, "paid", group, False))
            cases.append((f"one   paid   x{group}", one, "paid", group, True))
            cases.append((f"new   paid   x{group}", sql, "paid", group, True))
            for kind in ("free", "keylim"):
                cases.append((f"one   {kind:6} x{group}", one, kind, group, True))
                cases.append((f"new   {kind:6} x{group}", sql, kind, group, True))
        results: dict[str, list[float]] = {label: [] for label, *_ in cases}
        for rnd in range(args.rounds):
            for n, (label, module, kind, group, policy) in enumerate(cases):
                path = workdir / f"case{n}.sql"
                path.write_text(script(module, kind, counts[kind], group, policy))
                tps = pgbench(url, path, args.seconds, args.clients)
                results[label].append(tps)
                log(f"round {rnd + 1}: {label}: {tps:,.0f} tps")
        print(f"\n  statement tps ({args.clients} clients, {args.seconds} s runs, rounds interleaved):")
        for label, values in results.items():
            print(f"    {label}  " + " / ".join(f"{v:,.0f}" for v in values))
    finally:
        if name is not None and not args.keep:
            admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        elif name is not None:
            print(f"  kept: {url}")


if __name__ == "__main__":
    main()
