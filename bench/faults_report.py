"""What a fault scenario found (bench/faults.py): answers against usage rows, checks, and the final table."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import psycopg2

from bench.faults_client import Call


def usage_rows(url: str, tag: str) -> Counter[str]:
    """The usage rows of scenario ``tag``, counted by marker."""
    conn = psycopg2.connect(url, connect_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT endpoint, count(*) FROM api_key_usage WHERE endpoint LIKE %s GROUP BY endpoint",
                (f"/f/{tag}/%",),
            )
            return Counter(dict(cur.fetchall()))
    finally:
        conn.close()


def settled_rows(url: str, tag: str, *, quiet: float = 2.0, most: float = 45.0) -> Counter[str]:
    """The rows once no new one has arrived for ``quiet`` seconds (the writers flush every 0.2 s and retry a
    failed flush within a second), waiting ``most`` seconds at most."""
    deadline = time.monotonic() + most
    rows = usage_rows(url, tag)
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = usage_rows(url, tag)
        if now != rows:
            rows, stable_since = now, time.monotonic()
        elif time.monotonic() - stable_since >= quiet:
            break
    return rows


@dataclass
class Accounting:
    """Answers against rows: every call answered with a row-promising status must have exactly one."""

    answered: int  # calls whose answer promises a row
    lost: list[Call]  # promised, no row
    duplicated: int  # rows beyond the first for a call
    stray_503: int  # rows of calls answered 503 (nothing is recorded for them)
    unanswered_with_row: int  # rows of calls that got no answer (in flight when a process died)


def account(calls: Sequence[Call], rows: Counter[str]) -> Accounting:
    promised = [c for c in calls if c.promised]
    return Accounting(
        answered=len(promised),
        lost=[c for c in promised if rows[c.marker] == 0],
        duplicated=sum(n - 1 for n in rows.values() if n > 1),
        stray_503=sum(1 for c in calls if c.status == 503 and rows[c.marker]),
        unanswered_with_row=sum(1 for c in calls if c.status is None and rows[c.marker]),
    )


@dataclass
class Result:
    """One scenario's numbers, checks and verdict."""

    name: str
    statuses: Counter[str] = field(default_factory=Counter)  # answers by status, and calls without one
    longest_wait: float = 0.0
    rows: str = "-"
    recover: str = "-"
    checks: list[tuple[str, bool, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None

    @property
    def passed(self) -> bool:
        return self.skipped is None and all(ok for _, ok, _ in self.checks)

    @property
    def verdict(self) -> str:
        return "SKIP" if self.skipped is not None else "PASS" if self.passed else "FAIL"

    def check(self, label: str, ok: bool, value: str) -> None:
        self.checks.append((label, ok, value))

    @property
    def other_5xx(self) -> int:
        return sum(n for s, n in self.statuses.items() if s.isdigit() and s.startswith("5") and s != "503")


def tally(result: Result, calls: Sequence[Call]) -> None:
    """Answers by status (``closed``, ``refused``, ``timeout`` for calls without one) and the longest wait."""
    for call in calls:
        result.statuses[str(call.status) if call.status is not None else call.error or "?"] += 1
    result.longest_wait = max((c.wait for c in calls if c.wait is not None), default=0.0)


def first_answer_after(calls: Sequence[Call], moment: float, status: int = 200) -> float | None:
    """Seconds from ``moment`` to the first ``status`` answered after it."""
    times = [c.answered for c in calls if c.status == status and c.answered is not None and c.answered >= moment]
    return min(times) - moment if times else None


def every_client_back(calls: Sequence[Call], moment: float) -> float | None:
    """Seconds from ``moment`` until every traced client has had a 200 answered after it."""
    firsts: dict[str, float] = {}
    for c in calls:
        if c.status == 200 and c.answered is not None and c.answered >= moment:
            client = c.marker.rsplit("/", 2)[1]
            firsts[client] = min(firsts.get(client, c.answered), c.answered)
    clients = {c.marker.rsplit("/", 2)[1] for c in calls}
    return max(firsts.values()) - moment if firsts and set(firsts) == clients else None


def statuses_text(statuses: Counter[str]) -> str:
    return " ".join(f"{s}:{n}" for s, n in sorted(statuses.items()))


def print_result(result: Result) -> None:
    print(f"\n== {result.name}: {result.verdict}", flush=True)
    if result.skipped is not None:
        print(f"   skipped: {result.skipped}")
        return
    print(f"   answers: {statuses_text(result.statuses)}")
    print(f"   5xx other than 503: {result.other_5xx}   longest wait: {result.longest_wait:.2f} s")
    print(f"   rows: {result.rows}   recovery: {result.recover}")
    for note in result.notes:
        print(f"   {note}")
    for label, ok, value in result.checks:
        print(f"   {'PASS' if ok else 'FAIL'}  {label}: {value}")


def print_table(results: Sequence[Result]) -> None:
    print("\n| scenario | verdict | answers | 5xx not 503 | longest wait | rows | recovery |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        if r.skipped is not None:
            print(f"| {r.name} | SKIP | {r.skipped} | | | | |")
            continue
        print(
            f"| {r.name} | {r.verdict} | {statuses_text(r.statuses)} | {r.other_5xx} | {r.longest_wait:.2f} s "
            f"| {r.rows} | {r.recover} |"
        )
    failed = [f"{r.name}: {label} ({value})" for r in results for label, ok, value in r.checks if not ok]
    if failed:
        print("\nFailed checks:")
        for line in failed:
            print(f"  - {line}")
