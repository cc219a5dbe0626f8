"""The plans ProCode sells: defined once here, read by the limiter, the quota display and the staff area."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Plan:
    name: str
    label: str
    requests_per_minute: int
    monthly_quota: int
    max_keys: int
    price_label: str
    # True: successful calls stop at the monthly quota (429 quota_exceeded); False: they go on, as overage.
    hard_quota: bool = False


PLANS: dict[str, Plan] = {
    p.name: p
    for p in (
        Plan(
            "free",
            "Free",
            requests_per_minute=60,
            monthly_quota=10_000,
            max_keys=5,
            price_label="$0",
            hard_quota=True,
        ),
        Plan("pro", "Pro", requests_per_minute=1_000, monthly_quota=1_000_000, max_keys=50, price_label="$49 / month"),
        Plan(
            "enterprise",
            "Enterprise",
            requests_per_minute=20_000,
            monthly_quota=100_000_000,
            max_keys=1_000,
            price_label="Contact sales",
        ),
    )
}
PLAN_NAMES: tuple[str, ...] = tuple(PLANS)
