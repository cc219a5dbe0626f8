"""The fault matrix's scenarios (bench/faults.py): each runs the traced load, breaks one thing, and judges.

Promises checked everywhere (README, docs/operations.md): no 5xx but 503 from the key service; every answered
call of an existing key is exactly one usage row (none for a 503); a call waits at most the verification
deadline (5 s) plus a second for its answer. Each scenario adds its own criteria.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from bench.faults_client import Call, Flood, Load, Probe, idle, slow_body
from bench.faults_malformed import send_malformed
from bench.faults_report import Result, account, every_client_back, first_answer_after, settled_rows, tally
from bench.faults_rig import HOST, Rig

Moments = dict[str, float]
NO_ANSWER = ("closed", "refused", "timeout")


@dataclass(frozen=True)
class Scenario:
    name: str
    what: str
    run: Callable[[Rig], Result]


def traced(
    rig: Rig, tag: str, fault: Callable[[], Moments], *, port: int | None = None, probe: bool = False
) -> tuple[list[Call], list[Call], Moments]:
    """The traced load (and a probe) before, during and after ``fault``; their calls and the fault's moments."""
    s, port = rig.settings, port or rig.port
    load = Load(HOST, port, rig.keys, tag, clients=s.clients, rate=s.rate).start()
    prober = Probe(HOST, port, rig.keys, tag).start() if probe else None
    time.sleep(s.before)
    moments = fault()
    time.sleep(s.after)
    return load.stop(), prober.stop() if prober else [], moments


def judge(
    rig: Rig,
    name: str,
    calls: list[Call],
    *,
    answered_all: bool = True,
    max_wait: float | None = None,
    lost_window: tuple[float, float] | None = None,
) -> Result:
    """The checks every scenario makes. ``lost_window`` (seconds, moment): rows may be lost only of calls
    answered within that many seconds before that moment (a killed worker's last flush interval)."""
    result = Result(name)
    tally(result, calls)
    acc = account(calls, settled_rows(rig.url, name))
    result.rows = f"{acc.answered} answered, {len(acc.lost)} lost, {acc.duplicated} duplicated"
    result.check("no 5xx other than 503", result.other_5xx == 0, str(result.other_5xx))
    if lost_window is None:
        result.check(
            "every answered call has exactly one usage row",
            not acc.lost and not acc.duplicated,
            f"{len(acc.lost)} lost, {acc.duplicated} duplicated of {acc.answered}",
        )
    else:
        window, moment = lost_window
        oldest = max((moment - c.answered for c in acc.lost if c.answered is not None), default=0.0)
        result.check(
            f"rows lost only of calls answered in the last {window:.2f} s, none duplicated",
            oldest <= window and not acc.duplicated,
            f"{len(acc.lost)} lost (oldest answered {oldest * 1000:.0f} ms before), {acc.duplicated} duplicated",
        )
    result.check("no usage row for a call answered 503", acc.stray_503 == 0, str(acc.stray_503))
    if acc.unanswered_with_row:
        result.notes.append(f"{acc.unanswered_with_row} calls without an answer have a row (in flight at the fault)")
    unanswered = sum(1 for c in calls if c.error in NO_ANSWER)
    if answered_all:
        result.check("every call answered", unanswered == 0, f"{unanswered} without an answer")
    else:
        timeouts = sum(1 for c in calls if c.error == "timeout")
        result.check("no call left waiting", timeouts == 0, f"{timeouts} timed out")
    if max_wait is not None:
        wait = f"{result.longest_wait:.2f} s"
        result.check(f"every answer within {max_wait:g} s", result.longest_wait <= max_wait, wait)
    return result


def recovery(result: Result, calls: list[Call], moment: float, what: str, limit: float) -> None:
    first, every = first_answer_after(calls, moment), every_client_back(calls, moment)
    shown = "never" if first is None else f"{first:.2f} s"
    result.recover = f"first 200 {shown}, every client {'never' if every is None else f'{every:.2f} s'} after {what}"
    result.check(f"first 200 within {limit:g} s after {what}", first is not None and first <= limit, shown)


# --- the database ---------------------------------------------------------------------------------------------


def database_fault(name: str, act: Callable[[Rig], str], limit: float = 2.0) -> Callable[[Rig], Result]:
    """A scenario where PostgreSQL misbehaves under gunicorn: ``act`` does it and returns what the outage was."""

    def run(rig: Rig) -> Result:
        outage: list[str] = []

        def fault() -> Moments:
            started = time.monotonic()
            outage.append(act(rig))
            back = time.monotonic()
            return {"started": started, "back": back}

        calls, _, at = traced(rig, name, fault)
        result = judge(rig, name, calls, max_wait=rig.settings.deadline + 1)
        first_503 = first_answer_after(calls, at["started"], 503)
        shown = "none" if first_503 is None else f"after {first_503:.2f} s"
        result.notes.append(f"{outage[0]}: {at['back'] - at['started']:.1f} s; first 503 {shown}")
        recovery(result, calls, at["back"], "the database was back", limit)
        return result

    return run


def restart(mode: str) -> Callable[[Rig], str]:
    def act(rig: Rig) -> str:
        rig.cluster.restart(mode)
        return f"pg_ctl restart -m {mode}"

    return act


def stopped(rig: Rig) -> str:
    rig.cluster.stop("fast")
    time.sleep(rig.settings.stopped)
    rig.cluster.start()
    return "stopped (fast), then started"


def frozen(rig: Rig) -> str:
    count = rig.cluster.freeze()
    time.sleep(rig.settings.frozen)
    rig.cluster.thaw()
    return f"SIGSTOP on the postmaster and {count - 1} children, then SIGCONT"


# --- gunicorn -------------------------------------------------------------------------------------------------


def worker_killed(rig: Rig) -> Result:
    name, server = "worker-sigkill", rig.gunicorn()
    replaced: list[float] = []

    def fault() -> Moments:
        before = server.worker_pids()
        victim = before[0]
        killed = time.monotonic()
        os.kill(int(victim), signal.SIGKILL)
        while time.monotonic() - killed < 30:
            now = server.worker_pids()
            if victim not in now and len(now) == len(before):
                replaced.append(time.monotonic() - killed)
                break
            time.sleep(0.005)
        return {"killed": killed}

    calls, _, at = traced(rig, name, fault)
    window = rig.settings.flush_interval + 0.1
    result = judge(rig, name, calls, answered_all=False, lost_window=(window, at["killed"]))
    result.check("worker replaced within 2 s", bool(replaced) and replaced[0] <= 2, _seconds(replaced))
    every = every_client_back(calls, at["killed"])
    result.recover = f"replaced in {_seconds(replaced)}, every client served again {_seconds([every] if every else [])}"
    return result


def master_stopped(database_down: bool) -> Callable[[Rig], Result]:
    """SIGTERM the master under load (with PostgreSQL stopped first, if ``database_down``), then PostgreSQL and
    gunicorn back: every call answered before the stop still has exactly one row."""
    name = "master-sigterm-db-down" if database_down else "master-sigterm-db-up"

    def run(rig: Rig) -> Result:
        took: list[float] = []
        stop_log: list[str] = []

        def fault() -> Moments:
            if database_down:
                rig.cluster.stop("fast")
                time.sleep(1.5)
            took.append(rig.terminate())
            stop_log.append(rig.log_text())
            if database_down:
                rig.cluster.start()
            rig.start_gunicorn()
            return {"up": time.monotonic()}

        calls, _, at = traced(rig, name, fault)
        result = judge(rig, name, calls, answered_all=False)
        limit = rig.settings.graceful_timeout / 2
        result.check(f"stop within {limit:g} s (half the graceful timeout)", took[0] <= limit, f"{took[0]:.1f} s")
        # A worker that could not flush at the stop says where the rows went (a spill file) or that they are lost.
        stop_lines = [line for line in stop_log[0].splitlines() if "usage flush at shutdown failed" in line]
        if stop_lines:
            line = stop_lines[0]
            result.notes.append(f"log at the stop: {len(stop_lines)} lines like {line[line.find('usage flush') :]!r}")
        recovery(result, calls, at["up"], "gunicorn was back", 2.0)
        result.recover = f"stopped in {took[0]:.1f} s; " + result.recover
        return result

    return run


# --- clients --------------------------------------------------------------------------------------------------


def flood_of(kind: str, via_proxy: bool) -> Callable[[Rig], Result]:
    """``flood`` connections (idle, or slow bodies) held while the traced load and a new client every 0.25 s
    go on: every call is answered within 1 s, and the server closes every flood connection."""
    name = f"{kind}-{'nginx' if via_proxy else 'gunicorn'}"

    def run(rig: Rig) -> Result:
        port = rig.proxy() if via_proxy else rig.port
        if port is None:
            return Result(name, skipped="nginx not installed (make gateways installs it)")
        flood = Flood()
        # Through the proxy the flood comes from many addresses, each under its limit per address.
        sources = [f"127.0.{1 + g // 250}.{1 + g % 250}" for g in range(40)] if via_proxy else ["127.0.0.1"]

        def fault() -> Moments:
            flood.open(HOST, port, rig.settings.flood, idle if kind == "idle" else slow_body(HOST, port), sources)
            time.sleep(rig.settings.hold)
            return {"opened": flood.opened}

        try:
            calls, probes, at = traced(rig, name, fault, port=port, probe=True)
        finally:
            flood.close()
        result = judge(rig, name, calls + probes, max_wait=1.0)
        probe_wait = max((c.wait for c in probes if c.wait is not None), default=0.0)
        result.check(
            "a new client answered within 1 s throughout",
            bool(probes) and all(c.status is not None for c in probes) and probe_wait <= 1.0,
            f"{len(probes)} new clients, longest {probe_wait:.2f} s",
        )
        closed = [t - at["opened"] for t in flood.closed_at.values()]
        result.check(
            f"the server closed all {rig.settings.flood} flood connections",
            flood.still_open() == 0 and flood.failed == 0 and len(flood.sockets) == rig.settings.flood,
            f"{len(closed)} closed (last after {max(closed, default=0):.1f} s), {flood.failed} failed to open",
        )
        result.notes.append(f"flood answers: {flood.statuses()}")
        slowest = max((c for c in calls + probes if c.wait is not None), key=lambda c: c.wait or 0.0, default=None)
        if slowest is not None:
            result.notes.append(
                f"the longest wait began {slowest.sent - at['opened']:.1f} s after the flood was opened"
            )
        dropped = sorted(c.sent - at["opened"] for c in calls + probes if c.error == "dropped")
        if dropped:
            result.notes.append(
                f"{len(dropped)} kept-alive connections of the traced clients closed between calls (retried), "
                f"{dropped[0]:.1f} to {dropped[-1]:.1f} s after the flood was opened"
            )
        result.recover = f"flood closed by the server within {max(closed, default=0):.1f} s"
        return result

    return run


def malformed(rig: Rig) -> Result:
    name = "malformed-2000"
    found: list[dict[str, Counter[str]]] = []

    def fault() -> Moments:
        found.append(send_malformed(HOST, rig.port, rig.settings.malformed))
        return {}

    calls, _, _ = traced(rig, name, fault)
    result = judge(rig, name, calls, max_wait=1.0)
    by_kind = found[0]
    bad = {kind: dict(c) for kind, c in by_kind.items() if any(s.startswith("5") for s in c)}
    total: dict[str, int] = {}
    for counts in by_kind.values():
        for status, n in counts.items():
            total[status] = total.get(status, 0) + n
    result.check("no 5xx to a malformed request", not bad, str(bad) if bad else f"{sum(total.values())} sent")
    result.notes.append(f"malformed answers: {dict(sorted(total.items()))}")
    silent = sorted(kind for kind, counts in by_kind.items() if "none" in counts)
    if silent:
        result.notes.append(f"closed without an answer: {', '.join(silent)}")
    return result


def _seconds(values: list[float]) -> str:
    return f"{values[0]:.2f} s" if values else "never"


SCENARIOS = [
    Scenario(
        "pg-restart-fast", "pg_ctl restart -m fast under load", database_fault("pg-restart-fast", restart("fast"))
    ),
    Scenario(
        "pg-restart-immediate",
        "pg_ctl restart -m immediate (a crash, recovery at start) under load",
        database_fault("pg-restart-immediate", restart("immediate")),
    ),
    Scenario(
        "pg-stopped", "PostgreSQL stopped 20 s (8 s --quick), then started", database_fault("pg-stopped", stopped)
    ),
    Scenario(
        "pg-frozen",
        "postmaster and backends SIGSTOPped 15 s (8 s --quick): 503 within the deadline, 200 within 1 s of resuming",
        database_fault("pg-frozen", frozen, limit=1.0),
    ),
    Scenario("worker-sigkill", "one gunicorn worker SIGKILLed under load", worker_killed),
    Scenario(
        "master-sigterm-db-up", "gunicorn's master SIGTERMed under load, then started again", master_stopped(False)
    ),
    Scenario(
        "master-sigterm-db-down",
        "PostgreSQL stopped, then the master SIGTERMed; both started again: no answered call without its row",
        master_stopped(True),
    ),
    Scenario("idle-gunicorn", "2,000 idle connections to gunicorn", flood_of("idle", via_proxy=False)),
    Scenario("slow-body-gunicorn", "2,000 slow-body connections to gunicorn alone", flood_of("slow-body", False)),
    Scenario(
        "slow-body-nginx", "2,000 slow-body connections through docs/deploy/nginx.conf", flood_of("slow-body", True)
    ),
    Scenario("malformed-2000", "2,000 malformed requests to gunicorn under load", malformed),
]
