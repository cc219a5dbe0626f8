"""Webhook delivery results: what the deliverer's attempts come to, written to the outbox, with the retry policy.

The claiming and sending side is :mod:`portal.notify.delivery`; this is what it hands over once a receiver has
answered, so the policy (when to try again, when to give up, when an endpoint has failed for long enough to be
turned off) lives apart from the lanes that carry out the sends.

Any 2xx answer delivers. Every attempt is logged in ``webhook_attempts``. A failed delivery is tried again after
a delay drawn at random between 0 and the next step of ``WEBHOOK_RETRY_SCHEDULE`` ("full jitter": a burst of
failures does not come back as a burst); after the last step it is ``failed``. When a delivery is given up and
no delivery to its endpoint has succeeded since that delivery's first attempt, the endpoint has failed for the
whole schedule (about a day): it is disabled, audited and its organization's owners are mailed.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from portal import audit, mail
from portal.extensions import db
from portal.models import Organization, WebhookEndpoint
from portal.notify.client import Answer
from portal.notify.events import member_addresses

log = logging.getLogger("portal.notify")

ACTOR = "ProCode Portal"  # how the audit trail names the deliverer


@dataclass
class DeliveryResult:
    """What a pass (or one recording) did, counted by outcome, so a pass can sum its recordings and callers report."""

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
    """The retry steps of ``WEBHOOK_RETRY_SCHEDULE`` in seconds, read once per pass rather than at each failure."""
    return tuple(float(s) for s in config["WEBHOOK_RETRY_SCHEDULE"])


# --- What a lane reports back -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One claimed delivery as a lane sends it: enough to send it and to record its outcome or hand it back."""

    delivery_id: uuid.UUID
    attempts: int  # before this attempt
    due_at: datetime  # next_attempt_at before the claim, restored when the job is handed back unsent
    message_id: str
    body: bytes


@dataclass(frozen=True)
class Attempted:
    """A send that got an answer (or none): one attempt to log and one delivery to update."""

    endpoint_id: uuid.UUID
    job: Job
    answer: Answer
    started: float  # time.monotonic() when the attempt began


@dataclass(frozen=True)
class Released:
    """Claimed jobs a lane did not send (its endpoint unreachable, or the pass stopping): their lease is undone."""

    jobs: list[Job]


# --- Recording outcomes ----------------------------------------------------------------------------------------


def record(
    messages: Sequence[Attempted | Released],
    at: Callable[[float], datetime],
    schedule: Sequence[float],
    failing: set[uuid.UUID],
) -> DeliveryResult:
    """Write the attempts and hand-backs of ``messages`` in one transaction and commit it; what it recorded."""
    result = DeliveryResult()
    attempted = [m for m in messages if isinstance(m, Attempted)]
    released = [job for m in messages if isinstance(m, Released) for job in m.jobs]
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
    """The newest attempt's error, for the disabling reason: what the owners most need to fix."""
    error = db.session.scalar(
        sa.text(
            "SELECT error FROM webhook_attempts WHERE delivery_id = :id ORDER BY attempted_at DESC, id DESC LIMIT 1"
        ),
        {"id": delivery_id},
    )
    return str(error or "unknown")
