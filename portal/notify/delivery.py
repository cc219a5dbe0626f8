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

Any 2xx answer delivers. Every attempt is logged in ``webhook_attempts``. A failed delivery is tried again after
a delay drawn at random between 0 and the next step of ``WEBHOOK_RETRY_SCHEDULE`` ("full jitter": a burst of
failures does not come back as a burst); after the last step it is ``failed``. When a delivery is given up and
no delivery to its endpoint has succeeded since that delivery's first attempt, the endpoint has failed for the
whole schedule (about a day): it is disabled, audited and its organization's owners are mailed.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from flask import current_app

from portal import audit, mail
from portal.extensions import db
from portal.models import Organization, WebhookEndpoint
from portal.notify import signing
from portal.notify.client import Answer, EndpointClient
from portal.notify.endpoints import SigningKeys, signing_keys
from portal.notify.events import member_addresses
from portal.timeutil import utcnow
from portal.twofactor.sealing import Unsealable

log = logging.getLogger("portal.notify")

# Deliveries a pass claims (about) at most; the deliverer thread starts another pass at once after a full one.
BATCH = 2000
PER_LANE = 50  # deliveries of one endpoint claimed together and sent in turn over one connection
LEASE = timedelta(minutes=10)  # a claimed row is not claimed again before this, unless its outcome is recorded
ACTOR = "ProCode Portal"  # how the audit trail names the deliverer
RECORD_EVERY = 0.2  # seconds: the outcomes that arrive within this are recorded in one transaction


@dataclass
class DeliveryResult:
    delivered: int = 0
    retrying: int = 0  # failed this time, tried again later
    failed: int = 0  # failed for the last time
    released: int = 0  # claimed but not attempted: their endpoint could not be reached this pass
    disabled: list[uuid.UUID] = field(default_factory=list)  # endpoints disabled by this pass
    claimed: int = 0

    @property
    def attempted(self) -> int:
        return self.delivered + self.retrying + self.failed

    def add(self, other: DeliveryResult) -> None:
        self.delivered += other.delivered
        self.retrying += other.retrying
        self.failed += other.failed
        self.released += other.released
        self.disabled += other.disabled
        self.claimed += other.claimed


def retry_delay(attempts: int, schedule: Sequence[float], rng: random.Random | None = None) -> timedelta | None:
    """How long to wait after ``attempts`` failed attempts: a random time up to the schedule's step for that
    retry, or None when the schedule is used up (the delivery is given up)."""
    if attempts > len(schedule):
        return None
    step = float(schedule[max(attempts, 1) - 1])
    return timedelta(seconds=(rng or random).uniform(0, step))


def retry_schedule(config: Mapping[str, Any]) -> tuple[float, ...]:
    return tuple(float(s) for s in config["WEBHOOK_RETRY_SCHEDULE"])


# --- What a pass hands its lanes and gets back ---------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    delivery_id: uuid.UUID
    attempts: int  # before this attempt
    due_at: datetime  # next_attempt_at before the claim, restored when the job is handed back unsent
    message_id: str
    body: bytes


@dataclass
class _Lane:
    endpoint_id: uuid.UUID
    url: str
    keys: SigningKeys | None  # None: the secret cannot be unsealed (SECRET_KEY changed)
    jobs: list[_Job]


@dataclass(frozen=True)
class _Attempted:
    endpoint_id: uuid.UUID
    job: _Job
    answer: Answer
    started: float  # time.monotonic() when the attempt began


@dataclass(frozen=True)
class _Released:
    jobs: list[_Job]


@dataclass(frozen=True)
class _LaneDone:
    endpoint_id: uuid.UUID
    unreachable: bool
    full: bool  # it had as many rows as a claim takes: its endpoint may have more


_Message = _Attempted | _Released | _LaneDone


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
            try:
                result.add(_record(messages, at, schedule, failing))
            except sa.exc.OperationalError:  # a deadlock or a dropped connection: once more, then give up the pass
                db.session.rollback()
                log.warning("recording webhook attempts failed; trying again", exc_info=True)
                result.add(_record(messages, at, schedule, failing))
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
        lane.jobs.append(_Job(row.id, row.attempts, row.due_at, str(payload["id"]), signing.body(payload)))
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
            inbox.put(_Attempted(lane.endpoint_id, job, answer, started))
            if answer.unreachable:
                unreachable = True
                break
    except BaseException:
        log.exception("webhook lane for endpoint %s failed", lane.endpoint_id)
    finally:
        client.close()
        if sent < len(lane.jobs):
            inbox.put(_Released(lane.jobs[sent:]))
        inbox.put(_LaneDone(lane.endpoint_id, unreachable, full=len(lane.jobs) >= PER_LANE))


# --- Recording outcomes ----------------------------------------------------------------------------------------


def _record(messages: list[_Message], at: Any, schedule: Sequence[float], failing: set[uuid.UUID]) -> DeliveryResult:
    """Write the attempts and hand-backs of ``messages`` in one transaction and commit it; what it recorded."""
    result = DeliveryResult()
    attempted = [m for m in messages if isinstance(m, _Attempted)]
    released = [job for m in messages if isinstance(m, _Released) for job in m.jobs]
    if released:
        db.session.execute(
            sa.text(
                "UPDATE webhook_deliveries SET next_attempt_at = :due "
                "WHERE id = :id AND status = 'pending' AND next_attempt_at > :due"
            ),
            [{"id": job.delivery_id, "due": job.due_at} for job in sorted(released, key=lambda j: j.delivery_id)],
        )
        result.released += len(released)
    if not attempted:
        db.session.commit()
        return result
    # Lock the rows first: one whose endpoint was deleted meanwhile is gone, and its attempt is not logged.
    present = set(
        db.session.scalars(
            sa.text("SELECT id FROM webhook_deliveries WHERE id = ANY(CAST(:ids AS uuid[])) ORDER BY id FOR UPDATE"),
            {"ids": [str(m.job.delivery_id) for m in attempted]},
        )
    )
    rows: dict[str, list[Any]] = {
        k: [] for k in ("ids", "ats", "codes", "ms", "errors", "excerpts", "statuses", "nexts")
    }
    given_up: list[tuple[uuid.UUID, uuid.UUID]] = []
    streaks: dict[uuid.UUID, tuple[bool, int]] = {}  # endpoint -> (had a success, failures since the last one)
    for message in attempted:
        job, answer = message.job, message.answer
        if job.delivery_id not in present:
            continue
        when = at(message.started)
        status, retry_at = "delivered", None
        reset, failures = streaks.get(message.endpoint_id, (False, 0))
        if answer.ok:
            streaks[message.endpoint_id] = (True, 0)
            result.delivered += 1
        else:
            streaks[message.endpoint_id] = (reset, failures + 1)
            delay = retry_delay(job.attempts + 1, schedule)
            if delay is None:
                status = "failed"
                given_up.append((message.endpoint_id, job.delivery_id))
                result.failed += 1
                log.warning(
                    "webhook delivery %s given up after %d attempts: %s",
                    job.delivery_id,
                    job.attempts + 1,
                    answer.error,
                )
            else:
                status, retry_at = "pending", when + delay
                result.retrying += 1
        for name, value in (
            ("ids", str(job.delivery_id)),
            ("ats", when),
            ("codes", answer.status_code),
            ("ms", answer.duration_ms),
            ("errors", answer.error),
            ("excerpts", answer.excerpt),
            ("statuses", status),
            ("nexts", retry_at),
        ):
            rows[name].append(value)
    if rows["ids"]:
        # One statement for the whole batch: the attempts logged, the deliveries updated.
        db.session.execute(
            sa.text(
                """
                WITH v AS (
                    SELECT * FROM unnest(
                        CAST(:ids AS uuid[]), CAST(:ats AS timestamptz[]), CAST(:codes AS smallint[]),
                        CAST(:ms AS int[]), CAST(:errors AS text[]), CAST(:excerpts AS text[]),
                        CAST(:statuses AS text[]), CAST(:nexts AS timestamptz[])
                    ) AS v(id, at, code, ms, error, excerpt, status, next)
                ), logged AS (
                    INSERT INTO webhook_attempts
                        (delivery_id, attempted_at, status_code, duration_ms, error, response_excerpt)
                    SELECT id, at, code, ms, error, excerpt FROM v
                )
                UPDATE webhook_deliveries d SET
                    attempts = d.attempts + 1,
                    status = v.status,
                    last_attempt_at = v.at,
                    delivered_at = CASE WHEN v.status = 'delivered' THEN v.at END,
                    next_attempt_at = COALESCE(v.next, d.next_attempt_at)
                FROM v WHERE d.id = v.id
                """
            ),
            rows,
        )
        # Only counts that change, in id order as every deliverer writes them, so two never wait on each other
        # (and a healthy endpoint's batch writes no endpoint row at all).
        changes = [
            {"id": e, "reset": reset, "failures": n}
            for e, (reset, n) in sorted(streaks.items())
            if n > 0 or e in failing
        ]
        if changes:
            db.session.execute(
                sa.text(
                    "UPDATE webhook_endpoints SET consecutive_failures = "
                    "CASE WHEN :reset THEN 0 ELSE consecutive_failures END + :failures "
                    "WHERE id = :id AND (:failures > 0 OR consecutive_failures <> 0)"
                ),
                changes,
            )
        for e, (_reset, n) in streaks.items():
            if n > 0:
                failing.add(e)
            elif e in failing:
                failing.discard(e)  # reset to 0 above
    for endpoint_id, delivery_id in given_up:
        if _disable_if_failing(endpoint_id, delivery_id, at(time.monotonic())):
            result.disabled.append(endpoint_id)
    db.session.commit()
    return result


def _disable_if_failing(endpoint_id: uuid.UUID, delivery_id: uuid.UUID, moment: datetime) -> bool:
    """Disable the endpoint of a given-up delivery if nothing reached it since that delivery's first attempt."""
    first = db.session.scalar(
        sa.text("SELECT min(attempted_at) FROM webhook_attempts WHERE delivery_id = :id"), {"id": delivery_id}
    )
    if first is None:  # the delivery is gone (its endpoint deleted meanwhile)
        return False
    succeeded = db.session.scalar(
        sa.text(
            "SELECT EXISTS (SELECT 1 FROM webhook_deliveries WHERE endpoint_id = :endpoint AND delivered_at >= :first)"
        ),
        {"endpoint": endpoint_id, "first": first},
    )
    if succeeded:
        return False
    endpoint = db.session.get(WebhookEndpoint, endpoint_id, with_for_update=True, populate_existing=True)
    if endpoint is None or endpoint.disabled_at is not None:
        return False
    org = db.session.get(Organization, endpoint.organization_id)
    if org is None:
        return False
    since = first.strftime("%Y-%m-%d %H:%M UTC") if first else "its first attempt"
    reason = f"Every delivery failed since {since}; the last error: {_last_error(delivery_id)}"[:500]
    endpoint.disabled_at = moment
    endpoint.disabled_reason = reason
    audit.record(
        "webhook.disabled",
        organization_id=org.id,
        actor=None,
        actor_label=ACTOR,
        target_type="webhook_endpoint",
        target_id=endpoint.id,
        details={"url": endpoint.url, "reason": reason},
    )
    for address in member_addresses(org):
        try:
            mail.enqueue(address, "webhook_disabled", org=org, endpoint=endpoint, reason=reason, since=since)
        except mail.MailConfigError as exc:
            log.warning("webhook endpoint %s disabled, owners not mailed: %s", endpoint.id, exc)
            break
    log.warning("webhook endpoint %s of %s disabled: %s", endpoint.id, org.slug, reason)
    return True


def _last_error(delivery_id: uuid.UUID) -> str:
    error = db.session.scalar(
        sa.text(
            "SELECT error FROM webhook_attempts WHERE delivery_id = :id ORDER BY attempted_at DESC, id DESC LIMIT 1"
        ),
        {"id": delivery_id},
    )
    return str(error or "unknown")
