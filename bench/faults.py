"""The fault matrix (``make faults``): the key service under a broken database, dying processes and hostile
clients, judged against what the README promises. Not part of the test suite (it takes minutes).

    make faults                                       # every scenario, ~6 minutes
    .venv/bin/python bench/faults.py --quick          # shorter outages, ~4 minutes
    .venv/bin/python bench/faults.py --only pg-frozen --only worker-sigkill
    .venv/bin/python bench/faults.py --list

It starts a private PostgreSQL cluster (bench/faults_cluster.py), migrates a fresh database, seeds the
verification benchmark's 1,000 organizations and 10,000 keys (bench/verify.py), and serves it with gunicorn and
the shipped gunicorn.conf.py (bench/harness.py). 32 keep-alive clients make ~280 verifications a second, each
carrying a unique marker as its ``endpoint``, which its usage row stores: rows lost or duplicated are counted
exactly against the answers (bench/faults_client.py). Each scenario prints its answers by status, 5xx other
than 503, the longest wait for an answer, rows against the promise, the time to recover and PASS/FAIL per
criterion (bench/faults_scenarios.py); a table follows, and the exit status is 1 if any scenario failed.
docs/operations.md ("Fault matrix") describes each scenario and its criteria.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.faults_client import Load  # noqa: E402
from bench.faults_report import Result, print_result, print_table  # noqa: E402
from bench.faults_rig import DEFAULT_PORTS, HOST, Rig, Settings  # noqa: E402
from bench.faults_scenarios import SCENARIOS  # noqa: E402
from bench.harness import log  # noqa: E402


def port_range(text: str) -> range:
    low, _, high = text.partition("-")
    return range(int(low), int(high or low) + 1)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter outages and phases")
    parser.add_argument("--only", action="append", default=[], metavar="SCENARIO", help="run only these (repeat)")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument(
        "--ports",
        type=port_range,
        default=DEFAULT_PORTS,
        help=f"ports for PostgreSQL, gunicorn and nginx (default {DEFAULT_PORTS.start}-{DEFAULT_PORTS.stop - 1})",
    )
    parser.add_argument("--deadline", type=float, default=5.0, help="the verification deadline promised (s)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the servers' logs (their path is printed)")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if args.list:
        for scenario in SCENARIOS:
            print(f"{scenario.name:24} {scenario.what}")
        return 0
    names = [n for option in args.only for n in option.split(",")]
    unknown = set(names) - {s.name for s in SCENARIOS}
    if unknown:
        raise SystemExit(f"unknown scenario {', '.join(sorted(unknown))} (--list shows them)")
    chosen = [s for s in SCENARIOS if not names or s.name in names]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # floods of 2,000 connections, here and in gunicorn
    settings = Settings(quick=args.quick, deadline=args.deadline)
    started = time.monotonic()
    rig = Rig(args.ports, settings)
    results: list[Result] = []
    try:
        rig.ready()
        warmup = Load(HOST, rig.port, rig.keys, "warmup", clients=settings.clients, rate=settings.rate).start()
        time.sleep(2)
        warmup.stop()
        for scenario in chosen:
            log(f"{scenario.name}: {scenario.what}")
            rig.ready()
            try:
                result = scenario.run(rig)
            except Exception as exc:  # noqa: BLE001 - one broken scenario must not hide the others' results
                result = Result(scenario.name)
                result.check("scenario ran to the end", False, f"{type(exc).__name__}: {exc}")
            print_result(result)
            results.append(result)
    finally:
        rig.close(keep=args.keep_logs or any(not r.passed and r.skipped is None for r in results))
    print(
        f"\nFault matrix: gunicorn.conf.py as shipped ({rig.workers} gevent workers), {settings.clients} keep-alive "
        f"clients at {settings.rate:.0f} calls/s, {'quick' if args.quick else 'full'} run, "
        f"{time.monotonic() - started:.0f} s"
    )
    print_table(results)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return 1 if any(not r.passed and r.skipped is None for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
