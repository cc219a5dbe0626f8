"""Each client address's budget of malformed or unknown keys: in-process, so a refusal costs no database.

A client sending random strings would otherwise cost a lookup and a counted call each. Per worker process and
per one-minute window (UTC, aligned like the rate limiter's), an address may make ``limit`` calls answered
``malformed`` or ``unknown``; after that every call from the address, whatever its key, is answered 429
``too_many_invalid_keys`` until the window ends, before the key is even parsed. Well-formed keys are refused
too because anyone can compute the format's checksum: letting them through would leave a flood of random
well-formed keys one lookup each.

The check on the hot path is one dictionary lookup in the table of addresses that spent their budget (empty
unless someone is refused). Only a failed call takes the lock. The table of addresses counted in the current
window holds at most ``max_addresses``; once full, new addresses go uncounted until the window ends (the
counts of calls stay exact, only the refusal is lost), so the memory is bounded whatever the traffic.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

WINDOW_SECONDS = 60


class InvalidKeyBudget:
    """Per-address count of failed-key calls in the current window, and the addresses that are over it."""

    def __init__(
        self,
        limit: int,
        *,
        max_addresses: int = 10_000,
        window: int = WINDOW_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.limit = limit  # 0 turns the budget off
        self.max_addresses = max_addresses
        self.window = window
        self.clock = clock
        self.uncounted = 0  # failed calls from addresses the full table could not take (observability)
        self._lock = threading.Lock()
        self._window = -1  # the window ``_counts`` and ``_spent`` belong to
        self._counts: dict[str, int] = {}
        self._spent: dict[str, float] = {}  # address -> when its window ends (clock seconds)

    def retry_after(self, address: str | None) -> int | None:
        """Seconds until ``address`` may call again when it has spent its budget, else ``None``."""
        ends = self._spent.get(address) if address is not None else None
        if ends is None:
            return None
        wait = ends - self.clock()
        return max(1, math.ceil(wait)) if wait > 0 else None

    def spend(self, address: str | None) -> None:
        """Count one malformed or unknown answer against ``address`` (no address: nothing to count against)."""
        if address is None or self.limit <= 0:
            return
        now = self.clock()
        window = int(now // self.window)
        with self._lock:
            if window != self._window:
                self._window = window
                self._counts = {}
                self._spent = {}
            used = self._counts.get(address)
            if used is None and len(self._counts) >= self.max_addresses:
                self.uncounted += 1
                return
            used = (used or 0) + 1
            self._counts[address] = used
            if used >= self.limit:
                self._spent[address] = (window + 1) * self.window

    def __len__(self) -> int:
        """Addresses counted in the current window."""
        return len(self._counts)
