"""Delivering webhooks: due rows of the ``webhook_deliveries`` outbox, claimed under a lease, sent concurrently.

A pass claims due deliveries with ``SELECT … FOR UPDATE SKIP LOCKED`` and moves their ``next_attempt_at`` ahead
by :data:`LEASE` in one short transaction, so any number of threads and processes can deliver at once and none
sends a row another holds; a process that dies mid-pass leaves its rows to be sent again when the lease runs out
(at least once: the ``webhook-id`` lets a receiver drop the duplicate). No transaction stays open while a
receiver is awaited.

Deliveries are grouped per endpoint into *lanes*: one endpoint's claimed rows go out in turn over one connection
while up to ``WEBHOOK_CONCURRENCY`` endpoints are served at once, and a lane that finishes makes room for the
next claim; sends are paced to ``WEBHOOK_MAX_PER_SECOND`` per process, so a burst takes a bounded share of a web
worker's CPU (docs/performance.md). A receiver that cannot be reached (refused destination, no connection, no
answer within ``WEBHOOK_TIMEOUT``) costs its lane one attempt: the lane's other rows are handed back untouched
and the endpoint is left alone for the rest of the pass, so a hanging receiver delays only its own events.

What the attempts come to is written by :mod:`portal.notify.delivery_results`, which also holds the retry
schedule and disables an endpoint that has failed for the whole of it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from flask import current_app

from portal.extensions import db
from portal.models import WebhookEndpoint
from portal.notify import signing
from portal.notify.client import Answer, EndpointClient
from portal.notify.delivery_results import Attempted, DeliveryResult, Job, Released, record, retry_schedule
from portal.notify.endpoints import SigningKeys, signing_keys
from portal.timeutil import utcnow
from portal.twofactor.sealing import Unsealable

log = logging.getLogger("portal.notify")

# Deliveries a pass claims (about) at most; the deliverer thread starts another pass at once after a full one.
BATCH = 2000
PER_LANE = 50  # deliveries of one endpoint claimed together and sent in turn over one connection
LEASE = timedelta(minutes=10)  # a claimed row is not claimed again before this, unless its outcome is recorded
RECORD_EVERY = 0.2  # seconds: the outcomes that arrive within this are recorded in one transaction


# --- What a pass hands its lanes, and what a lane says when it ends ----------------------------------------


@dataclass
class _Lane:
    """One endpoint's claimed jobs, sent in turn by one pool thread so the endpoint sees one connection."""

    endpoint_id: uuid.UUID
    url: str
    keys: SigningKeys | None  # None: the secret cannot be unsealed (SECRET_KEY changed)
    jobs: list[Job]


@dataclass(frozen=True)
class _LaneDone:
    """A lane's last word, so the pass can free its slot and decide whether to claim its endpoint again."""

    endpoint_id: uuid.UUID
    unreachable: bool
    full: bool  # it had as many rows as a claim takes: its endpoint may have more


_Message = Attempted | Released | _LaneDone


def deliver_due(*, now: datetime | None = None, limit: int = BATCH) -> DeliveryResult:
    """Send the deliveries due at ``now`` (at most ``limit``) through ``db.session``; each outcome is committed.

    The database is used from the calling thread only; the HTTP exchanges run in a pool of
    ``WEBHOOK_CONCURRENCY`` threads (greenlets under gevent)."""
    config = current_app.config
    moment = now or utcnow()
    began = time.monotonic()
    timeout = float(config["WEBHOOK_TIMEOUT"])
    allow_private = bool(config["WEBHOOK_ALLOW_PRIVATE"])
    concurrency = max(1, int(config["WEBHOOK_CONCURRENCY"]))
    schedule = retry_schedule(config)
    result = DeliveryResult()
    inbox: queue.Queue[_Message] = queue.Queue()
    busy: set[uuid.UUID] = set()
    left_alone: set[uuid.UUID] = set()  # unreachable this pass
    stop = threading.Event()
    keys: dict[Any, SigningKeys | None] = {}
    failing: set[uuid.UUID] = set()  # endpoints whose consecutive_failures may not be 0
    rate = float(config["WEBHOOK_MAX_PER_SECOND"])
    pacer = _Pacer(rate)
    # A lane ends within PER_LANE timeouts and paced turns; waiting longer than that means a lane died silently.
    patience = PER_LANE * (timeout + (concurrency / rate if rate > 0 else 0)) + 60

    def at(started: float) -> datetime:
        return moment + timedelta(seconds=started - began)

    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="webhook")
    more = True  # whether a claim may find rows: not after one that found fewer lanes than it asked for
    try:
        while True:
            free = concurrency - len(busy)
            if free > 0 and more and result.claimed < limit:
                per_lane = min(PER_LANE, limit - result.claimed)
                wanted = min(free, -(-(limit - result.claimed) // per_lane))
                lanes = _claim(
                    at(time.monotonic()),  # a long pass also takes what came due since it began
                    exclude=busy | left_alone,
                    lanes=wanted,
                    per_lane=per_lane,
                    keys=keys,
                    failing=failing,
                )
                more = len(lanes) == wanted
                for lane in lanes:
                    busy.add(lane.endpoint_id)
                    result.claimed += len(lane.jobs)
                    pool.submit(_run_lane, lane, inbox, stop, pacer, timeout, allow_private)
            if not busy:
                break
            try:
                messages = [inbox.get(timeout=patience)]
            except queue.Empty:
                log.error("webhook lanes for %d endpoints gave no news in %.0f s; leaving them", len(busy), patience)
                break
            # What else arrives within RECORD_EVERY is written in the same transaction.
            window_ends = time.monotonic() + RECORD_EVERY
            lanes_done = int(isinstance(messages[0], _LaneDone))
            while lanes_done < len(busy) and (wait := window_ends - time.monotonic()) > 0:
                try:
                    messages.append(inbox.get(timeout=wait))
                except queue.Empty:
                    break
                lanes_done += isinstance(messages[-1], _LaneDone)
            outcomes = [m for m in messages if not isinstance(m, _LaneDone)]
            try:
                result.add(record(outcomes, at, schedule, failing))
            except sa.exc.OperationalError:  # a deadlock or a dropped connection: once more, then give up the pass
                db.session.rollback()
                log.warning("recording webhook attempts failed; trying again", exc_info=True)
                result.add(record(outcomes, at, schedule, failing))
            for message in messages:
                if isinstance(message, _LaneDone):
                    busy.discard(message.endpoint_id)
                    if message.unreachable:
                        left_alone.add(message.endpoint_id)
                    elif message.full:
                        more = True  # its endpoint may have more rows due
    except BaseException:
        db.session.rollback()
        stop.set()  # lanes hand their unsent rows back; the leases cover the rows already in flight
        raise
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return result


def _claim(
    moment: datetime,
    *,
    exclude: set[uuid.UUID],
    lanes: int,
    per_lane: int,
    keys: dict[Any, SigningKeys | None],
    failing: set[uuid.UUID],
) -> list[_Lane]:
    """Lease the next due deliveries (at most ``per_lane`` each) of the ``lanes`` endpoints whose oldest due
    delivery is oldest, and commit. Both steps read ``ix_webhook_deliveries_pending_endpoint``: a claim costs the
    rows it takes, not the whole backlog."""
    claimed = db.session.execute(
        sa.text(
            """
            WITH lanes AS (
                SELECT e.id FROM webhook_endpoints e
                CROSS JOIN LATERAL (
                    SELECT d.next_attempt_at FROM webhook_deliveries d
                    WHERE d.endpoint_id = e.id AND d.status = 'pending' AND d.next_attempt_at <= :now
                    ORDER BY d.endpoint_id, d.next_attempt_at LIMIT 1
                ) oldest
                WHERE e.paused_at IS NULL AND e.disabled_at IS NULL AND e.id <> ALL(CAST(:exclude AS uuid[]))
                ORDER BY oldest.next_attempt_at
                LIMIT :lanes
            ), picked AS (
                SELECT p.id, p.next_attempt_at AS due_at FROM lanes
                CROSS JOIN LATERAL (
                    SELECT d.id, d.next_attempt_at FROM webhook_deliveries d
                    WHERE d.endpoint_id = lanes.id AND d.status = 'pending' AND d.next_attempt_at <= :now
                    ORDER BY d.endpoint_id, d.next_attempt_at  -- the index's order: no backlog is sorted
                    LIMIT :per_lane
                    FOR UPDATE SKIP LOCKED
                ) p
            )
            UPDATE webhook_deliveries d SET next_attempt_at = :lease
            FROM picked, notification_events ev, webhook_endpoints e
            WHERE d.id = picked.id AND ev.id = d.event_id AND e.id = d.endpoint_id
            RETURNING d.id, d.endpoint_id, d.attempts, d.created_at, picked.due_at, ev.payload,
                      e.url, e.secret_sealed, e.previous_secret_sealed, e.previous_secret_until,
                      e.consecutive_failures
            """
        ),
        {
            "now": moment,
            "exclude": [str(e) for e in exclude],
            "lanes": lanes,
            "per_lane": per_lane,
            "lease": moment + LEASE,
        },
    ).all()
    db.session.commit()
    by_endpoint: dict[uuid.UUID, _Lane] = {}
    for row in sorted(claimed, key=lambda r: (r.due_at, r.created_at)):
        if row.consecutive_failures:
            failing.add(row.endpoint_id)
        lane = by_endpoint.get(row.endpoint_id)
        if lane is None:
            lane = by_endpoint[row.endpoint_id] = _Lane(row.endpoint_id, row.url, _keys(row, moment, keys), [])
        payload = row.payload
        lane.jobs.append(Job(row.id, row.attempts, row.due_at, str(payload["id"]), signing.body(payload)))
    return list(by_endpoint.values())


def _keys(row: Any, moment: datetime, cache: dict[Any, SigningKeys | None]) -> SigningKeys | None:
    """The endpoint's signing keys, unsealed once per pass (unsealing derives a key: not free)."""
    sealed = (bytes(row.secret_sealed), bytes(row.previous_secret_sealed or b""), row.previous_secret_until)
    if sealed in cache:
        return cache[sealed]
    endpoint = WebhookEndpoint(
        secret_sealed=sealed[0], previous_secret_sealed=sealed[1] or None, previous_secret_until=sealed[2]
    )
    try:
        cache[sealed] = signing_keys(endpoint, now=moment)
    except Unsealable:
        log.error("webhook endpoint %s: its signing secret cannot be unsealed (was SECRET_KEY changed?)", row[1])
        cache[sealed] = None
    return cache[sealed]


class _Pacer:
    """Spaces the sends of a pass at least 1/rate seconds apart (no limit for a rate of 0)."""

    def __init__(self, rate: float) -> None:
        self.interval = 1 / rate if rate > 0 else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self.interval
        if slot > now:
            time.sleep(slot - now)  # under gevent: yields to the worker's requests


def _run_lane(
    lane: _Lane, inbox: queue.Queue[_Message], stop: threading.Event, pacer: _Pacer, timeout: float, private: bool
) -> None:
    """Send one endpoint's jobs in turn (in a pool thread: HTTP only, no database)."""
    client = EndpointClient(lane.url, timeout=timeout, allow_private=private)
    unreachable = False
    sent = 0
    try:
        for job in lane.jobs:
            if stop.is_set():
                break
            pacer.wait()
            started = time.monotonic()
            if lane.keys is None:
                answer = Answer(None, 0, "Not sent: the signing secret cannot be read; rotate it", unreachable=True)
            else:
                headers = signing.headers(lane.keys, job.message_id, int(time.time()), job.body)
                answer = client.post(job.body, headers)
            sent += 1
            inbox.put(Attempted(lane.endpoint_id, job, answer, started))
            if answer.unreachable:
                unreachable = True
                break
    except BaseException:
        log.exception("webhook lane for endpoint %s failed", lane.endpoint_id)
    finally:
        client.close()
        if sent < len(lane.jobs):
            inbox.put(Released(lane.jobs[sent:]))
        inbox.put(_LaneDone(lane.endpoint_id, unreachable, full=len(lane.jobs) >= PER_LANE))
