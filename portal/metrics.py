"""Prometheus metrics: what each process counts, and the exposition ``GET /metrics`` serves (portal/ops/).

Under gunicorn every worker is its own process, so the metrics use prometheus_client's multiprocess mode:
gunicorn.conf.py gives each master start a fresh ``PROMETHEUS_MULTIPROC_DIR`` (before any worker imports
prometheus_client), each process writes its values to memory-mapped files there, and a scrape answered by any
worker sums every worker's files. Without that directory (the development server, tests) the values live in
this process and a scrape shows this process alone.

A multiprocess counter increment costs a lock and an mmap write, several microseconds, so the verification
path does not touch the metrics: :class:`VerificationTally` notes each call in a deque, and the usage writer
folds them into the metrics at each flush (every 0.2 s), as a scrape does for the scraping process
(docs/operations.md, "Metrics", has the measurements). Gauges that describe the database (mail and webhook
backlogs) are computed at scrape time with one query, by :func:`database_collector`.
"""

from __future__ import annotations

import logging
import os
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger("portal.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # generate_latest's text format, read by every Prometheus
# prometheus_client chose at its import, from PROMETHEUS_MULTIPROC_DIR, where values live; follow its choice.
MULTIPROCESS = values.ValueClass is not values.MutexValue

# Metrics of this process, registered here when there is no multiprocess directory (then the scrape reads them
# from this registry); in multiprocess mode the values are in the directory's files and this registry is unused.
LOCAL = CollectorRegistry(auto_describe=True)
_registry = None if MULTIPROCESS else LOCAL

# A verification is answered in a few milliseconds; the buckets reach the 5 s deadline of a database round trip.
VERIFICATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
PAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

VERIFICATIONS = Counter(
    "procode_verifications",
    "Key verifications answered, by outcome (POST /v1/keys/verify, gateway calls and @require_api_key).",
    ["outcome"],
    registry=_registry,
)
VERIFICATION_SECONDS = Histogram(
    "procode_verification_duration_seconds",
    "Time to answer a key verification, from reading the request to the answer.",
    buckets=VERIFICATION_BUCKETS,
    registry=_registry,
)
USAGE_ROWS_BUFFERED = Gauge(
    "procode_usage_rows_buffered",
    "Usage rows and invalid-key calls waiting in the workers' memory to be written, as of each worker's last flush.",
    multiprocess_mode="livesum",
    registry=_registry,
)
USAGE_FLUSH_FAILURES = Counter(
    "procode_usage_flush_failures",
    "Usage flushes that failed (the rows stay buffered and are retried).",
    registry=_registry,
)
DB_POOL_IN_USE = Gauge(
    "procode_db_pool_connections_in_use",
    "Connections checked out of the workers' SQLAlchemy pools (pages; verifications have their own connection).",
    multiprocess_mode="livesum",
    registry=_registry,
)
PAGE_SECONDS = Histogram(
    "procode_page_duration_seconds",
    "Time to answer a request handled by Flask, by endpoint name (never the path) and method.",
    ["endpoint", "method"],
    buckets=PAGE_BUCKETS,
    registry=_registry,
)


class VerificationTally:
    """Verifications noted on the hot path (one ``deque.append``, atomic without a lock in threads and greenlets
    alike), counted and added to the metrics off it (:meth:`fold`, from the usage writer and each scrape)."""

    MAX_WAITING = 50_000  # past this many unfolded calls (a stalled writer), the next call folds them itself

    def __init__(self, bounds: tuple[float, ...] = VERIFICATION_BUCKETS) -> None:
        self.bounds = (*bounds, float("inf"))
        self._calls: deque[tuple[str, float]] = deque()

    def record(self, outcome: str, seconds: float) -> None:
        """Note one answered verification that took ``seconds``."""
        self._calls.append((outcome, seconds))
        if len(self._calls) > self.MAX_WAITING:
            self.fold()

    def fold(self) -> int:
        """Add the calls noted since the last fold to the metrics; returns how many there were."""
        outcomes: dict[str, int] = {}
        buckets = [0] * len(self.bounds)
        total = 0.0
        take, bounds = self._calls.popleft, self.bounds
        while True:
            try:
                outcome, seconds = take()  # popleft is atomic: a call noted meanwhile is folded now or next time
            except IndexError:
                break
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            buckets[bisect_left(bounds, seconds)] += 1  # the histogram's rule: the first bound >= the value
            total += seconds
        if not outcomes:
            return 0
        for outcome, calls in outcomes.items():
            VERIFICATIONS.labels(outcome).inc(calls)
        # prometheus_client observes one value at a time; its histogram keeps a count per bucket (made cumulative
        # when exposed) and the sum, which is what a batch adds to (tests/test_ops.py checks the exposition).
        for value, calls in zip(VERIFICATION_SECONDS._buckets, buckets, strict=True):
            if calls:
                value.inc(calls)
        VERIFICATION_SECONDS._sum.inc(total)
        return sum(outcomes.values())


verification_tally = VerificationTally()  # this process's; the verifier records, the usage writer folds


def _forget_parent_counts() -> None:
    """A forked child must not fold again what its parent noted (the parent folds its own)."""
    verification_tally._calls.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_parent_counts)


# --- Scrape-time gauges ----------------------------------------------------------------------------------------

# One round trip per scrape, over the pending rows only (each table has a partial index of them).
BACKLOG_SQL = """
SELECT
  (SELECT count(*) FROM mail_outbox WHERE sent_at IS NULL AND failed_at IS NULL),
  (SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0)
     FROM mail_outbox WHERE sent_at IS NULL AND failed_at IS NULL),
  (SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'),
  (SELECT coalesce(greatest(extract(epoch FROM now() - min(next_attempt_at)), 0), 0)
     FROM webhook_deliveries WHERE status = 'pending')
"""
BACKLOG_GAUGES = (
    ("procode_mail_outbox_pending", "Mails waiting to be sent (neither sent nor given up)."),
    ("procode_mail_outbox_oldest_pending_age_seconds", "Age of the oldest mail waiting to be sent (0 when none)."),
    ("procode_webhook_deliveries_pending", "Webhook deliveries waiting to be made or retried."),
    (
        "procode_webhook_deliveries_oldest_due_age_seconds",
        "How long the most overdue pending webhook delivery has been due (0 when none is due).",
    ),
)


class _DatabaseCollector(Collector):
    def __init__(self, query: Callable[[str], tuple[Any, ...] | None]) -> None:
        self.query = query

    def collect(self) -> Iterable[Metric]:
        try:
            row = self.query(BACKLOG_SQL)
        except Exception:  # noqa: BLE001 - a scrape still shows the process metrics while the database is away
            log.warning("metrics: the backlog query failed", exc_info=True)
            row = None
        up = GaugeMetricFamily("procode_metrics_database_up", "1 when the scrape's backlog query answered.")
        up.add_metric([], 0 if row is None else 1)
        yield up
        if row is None:
            return
        for (name, documentation), value in zip(BACKLOG_GAUGES, row, strict=True):
            gauge = GaugeMetricFamily(name, documentation)
            gauge.add_metric([], float(value or 0))
            yield gauge


def database_collector(query: Callable[[str], tuple[Any, ...] | None]) -> Collector:
    """The mail and webhook backlog gauges, computed at scrape time with ``query(sql) -> row``."""
    return _DatabaseCollector(query)


class _Process(Collector):
    """This process's own registry, for a scrape without a multiprocess directory."""

    def collect(self) -> Iterator[Metric]:
        yield from LOCAL.collect()


def exposition(*collectors: Collector) -> bytes:
    """The metrics in Prometheus' text format: every worker's (or this process's) plus ``collectors``."""
    verification_tally.fold()  # the scraping process's own latest counts; the other workers fold within 0.2 s
    registry = CollectorRegistry(auto_describe=False)
    if MULTIPROCESS:
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_Process())
    for collector in collectors:
        registry.register(collector)
    return generate_latest(registry)
