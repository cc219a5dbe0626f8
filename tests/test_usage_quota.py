"""This month's calls against the plan's quota, and the forecast the dashboard shows."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from portal.extensions import db
from portal.usage import maintenance, pages, services
from tests import factories
from tests.usage_helpers import event, record

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)  # 10.5 days before the month ends (Dec 1, 00:00 UTC)


@pytest.fixture
def key(org, owner):
    return factories.api_key(org, owner, environment="live").api_key


@pytest.fixture
def fixed_now(monkeypatch):
    monkeypatch.setattr(pages, "utcnow", lambda: NOW)
    return NOW


def aged(org, created):
    org.created_at = created
    db.session.commit()
    return org


def per_day(key, days, calls, outcome="ok"):
    """``calls`` events on each of ``days`` (datetimes), spread over the first hours of the day."""
    return [event(key, day + timedelta(minutes=i % 300), outcome) for day in days for i in range(calls)]


def forecast(org):
    maintenance.fold()  # as every usage page does before reading the rollups
    return services.month_quota(org.id, org.plan_info, NOW, org.created_at)


def quota_text(client, org):
    html = client.get(f"/orgs/{org.slug}/usage?tz=UTC").get_data(as_text=True)
    section = html.split('id="quota-title"', 1)[1].split("</section>", 1)[0]
    return " ".join(re.sub(r"<[^>]+>", "", section).split())


def test_forecast_runs_out_before_the_month_ends(client, auth, org, owner, key, fixed_now):
    aged(org, datetime(2026, 1, 1, tzinfo=UTC))
    week = [datetime(2026, 11, d, 1, tzinfo=UTC) for d in range(14, 21)]  # inside the last 7 days
    record(
        per_day(key, [datetime(2026, 11, 5, tzinfo=UTC)], 2000)  # earlier this month
        + per_day(key, week, 1000)
        + per_day(key, week, 20, "rate_limited")  # rejected calls do not spend the quota
        + per_day(key, [datetime(2026, 10, 31, 18, tzinfo=UTC)], 500)  # last month
    )
    quota = forecast(org)
    assert (quota.used, quota.calls) == (9000, 9140)
    assert quota.projected == 9000 + 1000 * 10.5
    assert quota.runs_out_at == datetime(2026, 11, 21, 12, 0, tzinfo=UTC)  # 1,000 left at 1,000 a day

    auth.login(owner)
    text = quota_text(client, org)
    assert "9,000 of 10,000 calls" in text and "(90.0%, nearly used up)" in text
    assert "runs out on 2026-11-21 12:00 (UTC)" in text and "about 19,500 calls" in text


def test_forecast_within_the_quota(client, auth, org, owner, key, fixed_now):
    aged(org, datetime(2026, 1, 1, tzinfo=UTC))
    week = [datetime(2026, 11, d, 1, tzinfo=UTC) for d in range(14, 21)]
    record(per_day(key, [datetime(2026, 11, 2, tzinfo=UTC)], 1000) + per_day(key, week, 100))
    quota = forecast(org)
    assert (quota.used, quota.projected, quota.runs_out_at) == (1700, 1700 + 1050, None)

    auth.login(owner)
    text = quota_text(client, org)
    assert "1,700 of 10,000 calls" in text
    assert "about 2,750 calls by the end of the month, within the quota" in text and "runs out" not in text


def test_a_new_organization_is_paced_over_its_own_age(client, auth, org, owner, key, fixed_now):
    """Two days old with 1,000 calls a day: the pace is 1,000 a day, not 2,000 spread over 7 days."""
    aged(org, NOW - timedelta(days=2))
    record(per_day(key, [NOW - timedelta(days=2), NOW - timedelta(days=1)], 1000))
    quota = forecast(org)
    assert quota.used == 2000
    assert quota.projected == 2000 + 1000 * 10.5
    assert quota.runs_out_at == datetime(2026, 11, 28, 12, 0, tzinfo=UTC)  # 8,000 left at 1,000 a day

    auth.login(owner)
    text = quota_text(client, org)
    assert "since the organization was created" in text and "runs out on 2026-11-28 12:00" in text


def test_paid_plan_over_the_quota_shows_the_overage(client, auth, org, owner, key, fixed_now, monkeypatch):
    import dataclasses

    from portal import plans

    org.plan = "pro"
    aged(org, datetime(2026, 1, 1, tzinfo=UTC))
    monkeypatch.setitem(plans.PLANS, "pro", dataclasses.replace(plans.PLANS["pro"], monthly_quota=1000))
    record(per_day(key, [datetime(2026, 11, 2, tzinfo=UTC)], 1250))
    auth.login(owner)
    text = quota_text(client, org)
    assert "Over quota by 250 calls this month" in text and "billed as overage" in text


def test_free_plan_at_the_quota_says_calls_are_refused(client, auth, org, owner, key, fixed_now, monkeypatch):
    import dataclasses

    from portal import plans

    aged(org, datetime(2026, 1, 1, tzinfo=UTC))
    monkeypatch.setitem(plans.PLANS, "free", dataclasses.replace(plans.PLANS["free"], monthly_quota=100))
    record(per_day(key, [datetime(2026, 11, 2, tzinfo=UTC)], 100))
    auth.login(owner)
    text = quota_text(client, org)
    assert "The quota is used up for this month: successful calls are refused" in text
