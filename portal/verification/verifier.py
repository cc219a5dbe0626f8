"""Verify an API key: the one function behind ``POST /v1/keys/verify`` and ``@require_api_key``.

A malformed key is answered from its format alone (no database); any other key costs one prepared statement
(lookup, status, rate-limit upsert) and one buffered usage row. Every answered verification of an existing key
becomes exactly one ``api_key_usage`` row; a malformed or unknown key is only counted (per minute, client
address and outcome) and spends its address's budget (:mod:`portal.verification.budget`), after which the
address is answered 429 without a lookup. Requests that are not verifications (bad input) are never recorded.
"""

from __future__ import annotations

import functools
import json
import math
import time
from pathlib import Path
from typing import Any

from portal.keys import format as keyformat
from portal.metrics import VerificationTally, verification_tally
from portal.timeutil import utcnow
from portal.verification.backend import Backend, DirectBackend, libpq_dsn
from portal.verification.budget import InvalidKeyBudget
from portal.verification.outcomes import (
    REASONS,
    TOO_MANY_INVALID_KEYS,
    DatabaseUnavailable,
    RateLimit,
    Verification,
    compact_json,
)
from portal.verification.usage_writer import BufferedRecorder, UsageRecorder

MAX_USER_AGENT_CHARS = 256  # what a usage row keeps of a client's user agent
MAX_CACHED_META_CHARS = 512


class Verifier:
    """A process's verification engine: where the statement runs and where usage rows go."""

    def __init__(
        self,
        backend: Backend,
        recorder: UsageRecorder,
        pepper: str,
        budget: InvalidKeyBudget | None = None,
        tally: VerificationTally = verification_tally,
    ) -> None:
        self.backend = backend
        self.recorder = recorder
        self.pepper = pepper
        self.budget = budget if budget is not None else InvalidKeyBudget(0)
        self.tally = tally  # the metrics' count of outcomes and latencies, in plain ints (portal/metrics.py)

    def verify(
        self,
        candidate: object,
        endpoint: str | None,
        started: float | None = None,
        *,
        scope: str | None = None,
        ip: str | None = None,
        user_agent: str | None = None,
        peer: str | None = None,
    ) -> Verification:
        """Check ``candidate`` and record the answer; ``started`` (``perf_counter``) times the latency.

        ``scope`` is the permission the call needs (from :mod:`portal.scopes`, already checked), ``ip`` the
        client's address (a valid IP address, or ``None`` when unknown: a key with an allowlist refuses it),
        ``user_agent`` the client's own (recorded with the address on the usage row, for the key's forensics;
        cut to :data:`MAX_USER_AGENT_CHARS`).
        ``peer`` the address that made the call, which stands in for ``ip`` in the budget of invalid keys and
        their counts when ``ip`` is not given (never in a key's allowlist check).

        Raises :class:`~portal.verification.outcomes.DatabaseUnavailable` (nothing recorded but the metrics'
        ``unavailable`` count) when PostgreSQL cannot answer in time.
        """
        started = time.perf_counter() if started is None else started
        try:
            result = self._verify(candidate, endpoint, started, scope, ip, user_agent, peer)
        except DatabaseUnavailable:
            self.tally.record("unavailable", time.perf_counter() - started)
            raise
        self.tally.record(result.outcome, time.perf_counter() - started)
        return result

    def _verify(
        self,
        candidate: object,
        endpoint: str | None,
        started: float,
        scope: str | None,
        ip: str | None,
        user_agent: str | None,
        peer: str | None,
    ) -> Verification:
        address = ip if ip is not None else peer
        wait = self.budget.retry_after(address)
        if wait is not None:
            result = Verification(TOO_MANY_INVALID_KEYS, retry_after=wait)
            self.recorder.count_invalid(utcnow(), address, result.outcome)
            return result
        parsed = keyformat.parse(candidate)
        if parsed is None:
            result, at = Verification("malformed"), utcnow()
        else:
            row = self.backend.verify(keyformat.key_hash(parsed.key, self.pepper), scope, ip)
            result, at = _from_row(row, scope) if row is not None else (Verification("unknown"), utcnow())
        if result.key_id is None:  # malformed or unknown: counted, never a usage row of its own
            self.budget.spend(address)
            self.recorder.count_invalid(at, address, result.outcome)
            return result
        latency_ms = round((time.perf_counter() - started) * 1000.0, 3)
        self.recorder.add(
            (
                result.key_id,
                result.organization_id,
                at,
                endpoint,
                result.status_code,
                latency_ms,
                result.outcome,
                ip,
                user_agent[:MAX_USER_AGENT_CHARS] if user_agent else None,
            )
        )
        return result

    def start(self) -> None:
        """Start the usage writer now (a new worker), rather than at the first call."""
        self.recorder.start()

    def close(self) -> None:
        """Flush buffered usage and close connections: called when a worker stops."""
        self.recorder.close()
        self.backend.close()


def _from_row(row: tuple[Any, ...], scope: str | None) -> tuple[Verification, Any]:
    """A row of :func:`portal.verification.sql.verify_statement` as the answer and the time of the call."""
    key_id, org_id, slug, plan, environment, status, limit, remaining, reset_in, at, scopes, meta, ext, q_reset = row
    reason = status if status in REASONS else None
    result = Verification(
        "forbidden" if reason else status,
        key_id,
        org_id,
        slug,
        plan,
        environment,
        RateLimit(limit, remaining, max(1, math.ceil(reset_in))),
        reason,
        scope,
        scopes,
        None if meta is None else answer_meta(meta),
        ext,
        max(1, math.ceil(q_reset)) if status == "quota_exceeded" else None,
    )
    return result, at


def answer_meta(text: str) -> str:
    """A key's metadata as PostgreSQL prints it, in the answer's compact JSON. The same text comes back on every
    call of the key, so a short one's is remembered: parsing and encoding it again took 15 times the
    instructions of looking it up (docs/performance.md). Metadata may hold 4 KB; only short texts are kept, so
    the cache stays within a few MB."""
    return _answer_meta(text) if len(text) <= MAX_CACHED_META_CHARS else compact_json(json.loads(text))


@functools.lru_cache(maxsize=1024)
def _answer_meta(text: str) -> str:
    return compact_json(json.loads(text))


def build_verifier(
    database_url: str,
    pepper: str,
    *,
    flush_interval: float = 0.2,
    timeout: float = 5.0,
    invalid_key_budget: int = 0,
    budget_addresses: int = 10_000,
    partitions_ahead: int = 7,
    spill_dir: Path | None = None,
    pool_mode: str = "session",
) -> Verifier:
    """The production engine: one autocommit connection per process with a deadline of ``timeout`` seconds per
    call, a buffered usage writer (spilling to ``spill_dir`` what it cannot write when it stops) and this
    process's budget of invalid keys per client address (``invalid_key_budget`` calls a minute; 0 = no budget).
    ``pool_mode`` is that of a pooler between the app and PostgreSQL (:mod:`portal.verification.pooling`)."""
    dsn = libpq_dsn(database_url)
    budget = InvalidKeyBudget(invalid_key_budget, max_addresses=budget_addresses)
    recorder = BufferedRecorder(
        dsn, interval=flush_interval, spill_dir=spill_dir, pool_mode=pool_mode, partitions_ahead=partitions_ahead
    )
    return Verifier(DirectBackend(dsn, timeout=timeout, pool_mode=pool_mode), recorder, pepper, budget)
