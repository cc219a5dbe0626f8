"""Test and live calls have separate per-minute counters: a load test with test keys never throttles production."""

from __future__ import annotations

from portal.plans import PLANS
from tests import factories
from tests.api_helpers import away_from_a_window_boundary, usage_rows, verify

FREE = PLANS["free"].requests_per_minute


def test_test_keys_at_their_limit_leave_live_keys_their_whole_minute(client, org, owner):
    test_key = factories.api_key(org, owner, environment="test").plaintext
    live_key = factories.api_key(org, owner, environment="live").plaintext
    away_from_a_window_boundary()
    answers = [verify(client, test_key) for _ in range(FREE + 2)]
    assert [a.status_code for a in answers] == [200] * FREE + [429, 429]
    live = verify(client, live_key)
    assert live.status_code == 200
    assert live.headers["RateLimit-Remaining"] == str(FREE - 1)  # its own minute, untouched by the test calls
    more_live = [verify(client, live_key).status_code for _ in range(FREE)]
    assert more_live == [200] * (FREE - 1) + [429]  # and exact in its own minute too
    assert verify(client, test_key).status_code == 429  # the test minute is still spent
    outcomes = [r.outcome for r in usage_rows()]
    assert outcomes.count("ok") == 2 * FREE and outcomes.count("rate_limited") == 4
