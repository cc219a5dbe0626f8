"""Worker CPU per verification, counted in instructions (``make bench-verify-cpu``); not part of the test suite.

Wall-clock CPU per call on a shared virtual machine varies 2x between runs; an instruction count does not. An
in-process driver sends ``POST /v1/keys/verify`` calls through the app's WSGI callable, as gunicorn hands them
to a worker (a random key of 10,000 per call, the usage writer flushing every 100 calls), under valgrind, which
counts the instructions the process executes (Ir). Each checkout runs twice, with W and W+N calls: the
difference divided by N is the instructions of one call in steady state, without interpreter start-up, imports,
building the app or connecting. With ``--baseline PATH`` another checkout (e.g. the code before key policy) is
measured the same way in a subprocess, on its own database and with its own code, and the ratio is checked
against ``--max-ratio``.

The calls are those of ``make bench-verify`` (bench/verify.py and bench/verify.lua): every key restricted to
scopes, with an address allowlist and metadata, every call naming its scope, client address and user agent. A
checkout whose ``api_keys`` has no policy columns gets keys without policy and calls with only the key and the
endpoint.

Left out, as the same for any checkout: gunicorn's HTTP parsing and socket writes, and gevent's scheduling.
They would add the same count to both sides, so the ratio printed here is an upper bound of the whole
worker's.

The PostgreSQL side is counted the same way (bench/pg_valgrind.py): the sides' databases live on a private
cluster whose postmaster runs under valgrind for the measured runs, and each run adds up the instructions of
the backends that served its database (the verification connection and the usage writer's). ``--no-postgres``
counts the workers only, on ``BENCH_DATABASE_URL``'s server.

``--pool-mode transaction`` runs this tree with ``DATABASE_POOL_MODE=transaction`` (each statement sent with its
settings, planned on every call), still straight to PostgreSQL: the count is the statements' own cost, without
the pooler's (``make bench-verify`` with ``--pgbouncer`` measures PgBouncer's CPU). ``--baseline .`` with it
compares the two modes of one tree (the baseline runs in its default, session mode).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.pg_valgrind import ValgrindCluster

ROOT = Path(__file__).resolve().parent.parent
ORGS, KEYS_PER_ORG = 1000, 10
FLUSH_EVERY = 100  # calls per usage flush: about what a worker buffers in 0.2 s at full load
SEED = 20_240_611  # every side sends its keys in the same order


# --- Run inside the checkout being measured (its own ``portal`` on PYTHONPATH): only the standard library and
# --- that checkout's modules are imported here, never this tree's.


def _migrate(url: str) -> None:
    from flask_migrate import upgrade

    from portal import create_app
    from portal.extensions import db

    app = create_app({"SQLALCHEMY_DATABASE_URI": url}, env="testing")
    with app.app_context():
        upgrade()
        db.engine.dispose()


def setup(url: str, keys_path: Path, spec: dict[str, Any], pepper: str) -> dict[str, Any]:
    """Migrate and load 1,000 organizations with 10 keys each (with the spec's policy if the schema has it)."""
    import psycopg2
    import psycopg2.extras

    from portal.keys import format as keyformat

    _migrate(url)
    conn = psycopg2.connect(url)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT count(*) = 3 FROM information_schema.columns WHERE table_name = 'api_keys' "
            "AND column_name IN ('scopes', 'allowed_ips', 'meta')"
        )
        policy = bool(cur.fetchone()[0])
        cur.execute(
            "INSERT INTO organizations (name, slug, plan) SELECT 'Bench ' || i, 'bench-' || i, "
            "CASE WHEN i = 1 THEN 'enterprise' ELSE 'pro' END FROM generate_series(1, %s) i",
            (ORGS,),
        )
        cur.execute("SELECT id FROM organizations ORDER BY (substr(slug, 7))::int")
        keys, rows = [], []
        for (org_id,) in cur.fetchall():
            for n in range(KEYS_PER_ORG):
                key = keyformat.generate("live")
                keys.append(key)
                rows.append((org_id, f"key {n}", "live", keyformat.hint(key), keyformat.key_hash(key, pepper)))
        if policy:
            psycopg2.extras.execute_values(
                cur,
                "INSERT INTO api_keys (organization_id, name, environment, hint, key_hash, scopes, allowed_ips, meta)"
                " VALUES %s",
                [(*r, spec["scopes"], spec["allowed_ips"], psycopg2.extras.Json(spec["meta"])) for r in rows],
                template="(%s, %s, %s, %s, %s, %s::text[], %s::cidr[], %s)",
                page_size=2000,
            )
        else:
            psycopg2.extras.execute_values(
                cur,
                "INSERT INTO api_keys (organization_id, name, environment, hint, key_hash) VALUES %s",
                rows,
                page_size=2000,
            )
    conn.commit()
    conn.close()
    keys_path.write_text("\n".join(keys) + "\n")
    return {"policy": policy}


def drive(url: str, keys_path: Path, calls: int, spec: dict[str, Any] | None) -> dict[str, Any]:
    """Build the app as a gunicorn worker does and send ``calls`` verifications through its WSGI callable.

    The usage writer's thread is kept asleep and its buffer flushed here every ``FLUSH_EVERY`` calls, so the
    flushes, like the calls, are the same in every run (a timer would flush at moments that depend on speed).
    """
    from portal import create_app

    app = create_app({"SQLALCHEMY_DATABASE_URI": url}, env="production")
    recorder = app.extensions["portal.verifier"].recorder
    recorder.interval = 1e9
    recorder.batch = 1 << 30
    keys = keys_path.read_text().split()
    rng = random.Random(SEED)
    extra = b""
    if spec is not None:
        fields = {"scope": spec["scope"], "client_ip": spec["client_ip"], "user_agent": spec["user_agent"]}
        extra = b"," + json.dumps(fields, separators=(",", ":")).encode()[1:-1]
    bodies = [b'{"key":"%s","endpoint":"/bench/cpu"%s}' % (key.encode(), extra) for key in keys]
    template = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/v1/keys/verify",
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "RAW_URI": "/v1/keys/verify",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "40000",
        "HTTP_HOST": "127.0.0.1:8000",
        "HTTP_CONTENT_TYPE": "application/json",
        "CONTENT_TYPE": "application/json",
        "wsgi.url_scheme": "http",
        "wsgi.version": (1, 0),
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.errors": sys.stderr,
    }
    statuses: dict[str, int] = {}
    answer: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        answer.append(status)

    for n in range(1, calls + 1):
        body = bodies[rng.randrange(len(bodies))]
        environ = {**template, "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body)}
        for _chunk in app(environ, start_response):
            pass
        status = answer.pop()
        statuses[status] = statuses.get(status, 0) + 1
        if n % FLUSH_EVERY == 0:
            recorder.flush()
    recorder.flush()
    return {"calls": calls, "statuses": statuses}


# --- The orchestration, in this tree.


def _tree_env(tree: Path, url: str, pepper: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PORTAL_", "API_", "GUNICORN_"))}
    return {
        **env,
        "PYTHONPATH": str(tree),
        "PYTHONHASHSEED": "0",
        "DATABASE_URL": url,
        "SECRET_KEY": "bench-secret-" + "0" * 32,
        "API_KEY_PEPPER": pepper,
        "PORTAL_ENV": "production",
        "API_USAGE_FLUSH_INTERVAL": "1000000",
    }


class Side:
    """One checkout on its own throw-away database."""

    def __init__(
        self, label: str, tree: Path, admin_url: str, workdir: Path, spec: dict[str, Any], pool_mode: str = "session"
    ) -> None:
        from bench.harness import admin, with_db

        self.label, self.tree, self.spec, self.workdir, self.pool_mode = label, tree, spec, workdir, pool_mode
        self.admin_url = admin_url
        self.database = f"procode_cpu_{label}_{secrets.token_hex(3)}"
        admin(admin_url, f'CREATE DATABASE "{self.database}"')
        self.url = with_db(admin_url, self.database)
        self.pepper = "bench-pepper-" + "1" * 32
        self.keys = workdir / f"keys-{label}.txt"
        self.env = {**_tree_env(tree, self.url, self.pepper), "DATABASE_POOL_MODE": pool_mode}
        self.policy = False

    def _script(self, *args: str, valgrind: list[str] | None = None) -> dict[str, Any]:
        command = [*(valgrind or []), sys.executable, str(Path(__file__).resolve()), *args]
        out = subprocess.run(command, cwd=self.tree, env=self.env, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"{self.label}: {' '.join(args[:1])} failed:\n{out.stdout}\n{out.stderr[-4000:]}")
        line = next(line for line in out.stdout.splitlines() if line.startswith("VERIFY_CPU "))
        return json.loads(line[len("VERIFY_CPU ") :])  # type: ignore[no-any-return]

    def prepare(self) -> None:
        """Migrate and seed; one plain run of the driver writes the checkout's bytecode caches."""
        spec = json.dumps(self.spec)
        self.policy = self._script("--setup", self.url, str(self.keys), spec)["policy"]
        self.run(FLUSH_EVERY)

    def run(self, calls: int, tool: str | None = None, out: Path | None = None) -> dict[str, Any]:
        args = ["--drive", self.url, str(self.keys), str(calls)]
        if self.policy:
            args.append(json.dumps(self.spec))
        valgrind = None
        if tool == "cachegrind":
            valgrind = ["valgrind", "--tool=cachegrind", "--cache-sim=no", f"--cachegrind-out-file={out}"]
        elif tool == "callgrind":
            valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
        result = self._script(*args, valgrind=valgrind)
        if set(result["statuses"]) != {"200 OK"}:
            raise SystemExit(f"{self.label}: not every call was answered 200: {result['statuses']}")
        return result

    def instructions(self, calls: int, tool: str, cluster: ValgrindCluster | None) -> dict[str, int]:
        """Instructions of the worker and (with a counted cluster) of the backends that served it, by their
        application name (the verification connection, the usage writer's)."""
        out = self.workdir / f"{tool}.{self.label}.{calls}.out"
        before = cluster.backends(self.database) if cluster else {}
        self.run(calls, tool, out)
        counts = {"worker": _total_ir(out)}
        if cluster is not None:
            new = {pid: app for pid, app in cluster.backends(self.database).items() if pid not in before}
            counts.update(cluster.instructions(new))
        return counts

    def drop(self) -> None:
        from bench.harness import admin

        admin(self.admin_url, f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')


def _total_ir(path: Path) -> int:
    """The Ir total of a cachegrind or callgrind output file."""
    text = path.read_text()
    match = re.search(r"^(?:summary|totals):\s+(\d+)", text, re.MULTILINE)
    if match is None:
        raise SystemExit(f"no instruction total in {path}")
    return int(match.group(1))


def _describe(tree: Path) -> str:
    out = subprocess.run(["git", "-C", str(tree), "describe", "--always", "--dirty"], capture_output=True, text=True)
    return out.stdout.strip() or "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="another checkout to measure the same way and compare with")
    parser.add_argument("--calls", type=int, default=1000, help="N: the calls counted (a multiple of 100)")
    parser.add_argument("--warmup", type=int, default=200, help="W: calls before them (a multiple of 100)")
    parser.add_argument("--max-ratio", type=float, default=1.10, help="this tree / baseline at most this")
    parser.add_argument(
        "--profile", action="store_true", help="count with callgrind and keep its files for callgrind_annotate"
    )
    parser.add_argument("--keep", action="store_true", help="keep the databases and the valgrind output")
    parser.add_argument(
        "--no-postgres", action="store_true", help="count the workers only (no private cluster under valgrind)"
    )
    parser.add_argument(
        "--pool-mode",
        choices=("session", "transaction"),
        default="session",
        help="DATABASE_POOL_MODE of this tree (the baseline runs in session mode)",
    )
    parser.add_argument("--setup", nargs=3, metavar=("URL", "KEYS", "SPEC"), help=argparse.SUPPRESS)
    parser.add_argument("--drive", nargs="+", metavar="ARG", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.setup:  # inside the measured checkout
        url, keys, spec = args.setup
        print("VERIFY_CPU " + json.dumps(setup(url, Path(keys), json.loads(spec), os.environ["API_KEY_PEPPER"])))
        return
    if args.drive:  # inside the measured checkout, possibly under valgrind
        url, keys, calls, *rest = args.drive
        result = drive(url, Path(keys), int(calls), json.loads(rest[0]) if rest else None)
        print("VERIFY_CPU " + json.dumps(result), flush=True)
        os._exit(0)  # no interpreter shutdown: the same work after the last call in every run

    if args.calls % FLUSH_EVERY or args.warmup % FLUSH_EVERY or args.calls <= 0:
        raise SystemExit(f"--calls and --warmup must be multiples of {FLUSH_EVERY}")
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (make bench-verify-cpu installs it)")
    sys.path.insert(0, str(ROOT))
    from bench.harness import bench_server_url, free_ports, log
    from bench.pg_valgrind import ValgrindCluster
    from bench.verify import (
        BENCH_ALLOWED_IPS,
        BENCH_CLIENT_IP,
        BENCH_KEY_SCOPES,
        BENCH_META,
        BENCH_SCOPE,
        BENCH_USER_AGENT,
    )

    spec = {
        "scopes": list(BENCH_KEY_SCOPES),
        "allowed_ips": list(BENCH_ALLOWED_IPS),
        "meta": BENCH_META,
        "scope": BENCH_SCOPE,
        "client_ip": BENCH_CLIENT_IP,
        "user_agent": BENCH_USER_AGENT,
    }
    tool = "callgrind" if args.profile else "cachegrind"
    workdir = Path(tempfile.mkdtemp(prefix="procode-verify-cpu-"))
    cluster: ValgrindCluster | None = None
    if args.no_postgres:
        admin_url = bench_server_url()
    else:
        cluster = ValgrindCluster(Path(tempfile.mkdtemp(prefix="procode-verify-cpu-pg-")), free_ports(1)[0])
        cluster.init()
        cluster.start(counted=False)
        admin_url = cluster.url
    trees = [("now", ROOT)] + ([("baseline", args.baseline.resolve())] if args.baseline else [])
    sides: list[Side] = []
    started = time.monotonic()
    results: dict[str, dict[str, int]] = {}
    try:
        for label, tree in trees:
            sides.append(Side(label, tree, admin_url, workdir, spec, args.pool_mode if label == "now" else "session"))
        log(f"migrating and loading {ORGS * KEYS_PER_ORG} keys: {', '.join(f'{s.label} {s.tree}' for s in sides)}")
        with ThreadPoolExecutor(len(sides)) as pool:
            list(pool.map(Side.prepare, sides))
        parallel = len(sides)
        if cluster is not None:
            log("restarting PostgreSQL with its backends under valgrind; a first run per side loads its caches")
            cluster.stop()
            cluster.start(counted=True, tool=tool)
            for side in sides:
                side.run(args.warmup)
            # One side at a time: two sides' backends at once contend for the server's shared locks, and under
            # valgrind's slowness the waiting spins add a varying count to both.
            parallel = 1
        # Interleaved (in parallel when only workers are counted: valgrind runs a process on one core): each
        # side W calls, then W + N.
        for calls in (args.warmup, args.warmup + args.calls):
            log(f"{tool}: {calls} calls on each side")
            with ThreadPoolExecutor(parallel) as pool:
                counts = list(pool.map(lambda s, c=calls: s.instructions(c, tool, cluster), sides))  # type: ignore[misc]
            for side, count in zip(sides, counts, strict=True):
                first = results.get(side.label, {}) if calls > args.warmup else {}
                results[side.label] = {name: count.get(name, 0) - first.get(name, 0) for name in count | first}
    finally:
        for side in sides:
            if not args.keep:
                side.drop()
        if cluster is not None:
            cluster.stop()
            if not args.keep:
                shutil.rmtree(cluster.directory, ignore_errors=True)
        if args.keep or args.profile:
            log(f"valgrind output kept in {workdir}" + (f" and {cluster.directory}" if cluster else ""))
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    print()
    print(
        f"ProCode verification: instructions per call (valgrind {tool}, in-process WSGI driver, "
        f"{args.calls} calls after {args.warmup}, usage flushed every {FLUSH_EVERY})"
    )
    worker = {label: results[label]["worker"] / args.calls for label in results}
    # The verification connection and the usage writer's; a backend without a name (the app's SQLAlchemy pool at
    # start-up) does no per-call work.
    named = {label: {k: v for k, v in results[label].items() if k.startswith("procode-")} for label in results}
    backend = {label: sum(named[label].values()) / args.calls for label in results}
    for side in reversed(sides):
        calls_are = "scope, client_ip, user_agent; keys with policy" if side.policy else "key and endpoint only"
        pg = "" if cluster is None else f"  PostgreSQL {backend[side.label]:>10,.0f}"
        described = f"{side.label:9} {_describe(side.tree):24} {side.pool_mode:11}"
        print(f"  {described} worker {worker[side.label]:>10,.0f}{pg} Ir/call   ({calls_are})")
        if cluster is not None:
            apps = sorted(named[side.label].items())
            print(" " * 46 + "PostgreSQL by client: " + ", ".join(f"{k} {v / args.calls:,.0f}" for k, v in apps))
    print(f"  total time {time.monotonic() - started:.0f} s")
    if "baseline" in worker:
        verdicts = [("worker", worker)] + ([("PostgreSQL", backend)] if cluster is not None else [])
        failed = False
        for name, counts in verdicts:
            if not counts["baseline"]:
                raise SystemExit(f"no {name} instructions counted for the baseline")
            ratio = counts["now"] / counts["baseline"]
            ok = ratio <= args.max_ratio
            failed |= not ok
            print(
                f"  {name} ratio now / baseline {ratio:.3f}   {'PASS' if ok else 'FAIL'} (at most {args.max_ratio:.2f})"
            )
        if failed:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
