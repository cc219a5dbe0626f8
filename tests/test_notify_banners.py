"""The quota and expiry banners on the keys list and the usage dashboard: shown when there is something to act
on, the same on both pages, and not otherwise."""

from __future__ import annotations

import dataclasses
import re
from datetime import timedelta

import pytest

from portal.keys import services as key_services
from portal.plans import PLANS
from portal.timeutil import utcnow
from portal.usage import maintenance
from tests import factories
from tests.usage_helpers import event, record


@pytest.fixture
def key(org, owner):
    return factories.api_key(org, owner, name="Checkout", environment="live").api_key


def used(key, calls: int, outcome: str = "ok") -> None:
    """``calls`` calls this month (this minute, so never last month), folded as the usage pages fold them."""
    now = utcnow().replace(second=0, microsecond=0)
    record([event(key, now, outcome) for _ in range(calls)])
    maintenance.fold()


def banner_texts(client, path: str) -> dict[str, str]:
    """The banners of a page, by kind, as text."""
    html = client.get(path).get_data(as_text=True)
    found = re.findall(r'<p class="flash [^"]*banner-(\w+)" role="status">(.*?)</p>', html, re.S)
    return {kind: " ".join(re.sub(r"<[^>]+>", "", body).split()) for kind, body in found}


def test_no_banner_below_80_percent_and_without_expiring_keys(client, auth, org, owner, key):
    used(key, 7_999)
    used(key, 500, "rate_limited")  # refused calls do not spend the quota
    factories.api_key(org, owner, name="Later", expires_at=utcnow() + timedelta(days=8))
    auth.login(owner)
    assert banner_texts(client, f"/orgs/{org.slug}/keys/") == {}
    assert banner_texts(client, f"/orgs/{org.slug}/usage") == {}


def test_at_80_percent_a_warning_with_the_month_s_numbers(client, auth, org, owner, key):
    used(key, 8_500)
    auth.login(owner)
    keys_page = banner_texts(client, f"/orgs/{org.slug}/keys/")["quota"]
    usage_page = banner_texts(client, f"/orgs/{org.slug}/usage")["quota"]
    assert keys_page.startswith("You have used 85% of this month's 10,000 calls (8,500 so far).")
    assert "Once they are used up, calls are refused until" in keys_page  # the Free plan stops calls
    assert keys_page.endswith("See usage") and not usage_page.endswith("See usage")
    assert usage_page == keys_page.removesuffix(" See usage")


def test_at_100_percent_on_a_hard_quota_calls_are_refused_until_next_month(app, client, auth, org, owner, key):
    used(key, 10_000)
    auth.login(owner)
    html = client.get(f"/orgs/{org.slug}/keys/").get_data(as_text=True)
    assert '<p class="flash flash-error banner-quota" role="status">' in html
    text = banner_texts(client, f"/orgs/{org.slug}/usage")["quota"]
    month = utcnow().replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    next_month = (month + timedelta(days=32)).replace(day=1)
    assert text.startswith("You have used all of this month's 10,000 calls: calls are refused (429 quota_exceeded)")
    assert f"until {next_month:%Y-%m-%d} 00:00 UTC" in text
    assert 'href="mailto:support@procode.dev?subject=More%20API%20calls">Upgrade or ask for more calls</a>' in html
    app.config["UPGRADE_URL"] = "https://procode.dev/pricing"
    try:
        html = client.get(f"/orgs/{org.slug}/usage").get_data(as_text=True)
    finally:
        app.config["UPGRADE_URL"] = None
    assert '<a href="https://procode.dev/pricing">Upgrade or ask for more calls</a>' in html


def test_over_quota_on_a_plan_that_bills_overage_calls_keep_working(client, auth, monkeypatch, owner):
    monkeypatch.setitem(PLANS, "pro", dataclasses.replace(PLANS["pro"], monthly_quota=1_000))
    org = factories.org(plan="pro")
    factories.member(org, "owner", owner)
    used(factories.api_key(org, owner).api_key, 1_200)
    auth.login(owner)
    text = banner_texts(client, f"/orgs/{org.slug}/keys/")["quota"]
    assert text.startswith("You have used all of this month's 1,000 calls (1,200 so far). Calls keep working")
    assert "refused" not in text


def test_keys_expiring_within_7_days_are_named_and_linked(client, auth, org, owner):
    now = utcnow()
    soon = factories.api_key(org, owner, name="Partner sandbox", expires_at=now + timedelta(days=2)).api_key
    sooner = factories.api_key(org, owner, name="Demo", expires_at=now + timedelta(hours=3)).api_key
    factories.api_key(org, owner, name="Next month", expires_at=now + timedelta(days=8))
    revoked = factories.api_key(org, owner, name="Gone", expires_at=now + timedelta(days=1)).api_key
    key_services.revoke_key(org, revoked, owner)
    rolled = factories.api_key(org, owner, name="Rolled", expires_at=now + timedelta(days=3)).api_key
    key_services.roll_key(org, rolled, timedelta(hours=1), owner)  # the new key keeps the expiry: listed once
    auth.login(owner)
    html = client.get(f"/orgs/{org.slug}/keys/").get_data(as_text=True)
    text = banner_texts(client, f"/orgs/{org.slug}/usage")["expiry"]
    assert text.startswith("3 keys expire within 7 days: Demo (")
    assert text.index("Demo") < text.index("Partner sandbox") < text.index("Rolled")  # soonest first
    assert "Gone" not in text and "Next month" not in text and text.count("Rolled") == 1
    for api_key in (soon, sooner):
        assert f'<a href="/orgs/{org.slug}/keys/{api_key.id}">{api_key.name}</a>' in html


def test_many_expiring_keys_name_the_first_five_and_count_the_rest(client, auth, owner):
    org = factories.org(plan="pro")  # more keys than the Free plan's five
    factories.member(org, "owner", owner)
    now = utcnow()
    for day in range(1, 8):
        factories.api_key(org, owner, name=f"Key {day}", expires_at=now + timedelta(days=day, minutes=-1))
    auth.login(owner)
    text = banner_texts(client, f"/orgs/{org.slug}/keys/")["expiry"]
    assert text.startswith("7 keys expire within 7 days: Key 1 (")
    assert "Key 5" in text and "Key 6" not in text and " UTC) and 2 more. Roll them" in text


def test_one_expiring_key_reads_in_the_singular(client, auth, org, owner):
    factories.api_key(org, owner, name="Solo", expires_at=utcnow() + timedelta(days=6))
    auth.login(owner)
    text = banner_texts(client, f"/orgs/{org.slug}/keys/")["expiry"]
    assert text.startswith("1 key expires within 7 days: Solo (pk_test_")
    assert text.endswith(" UTC). Roll it to keep calls working, or set a later expiry.")


def test_the_staff_view_of_the_usage_page_has_no_banners(client, auth, org, staff, key):
    used(key, 9_000)
    auth.login(staff)
    response = client.get(f"/staff/orgs/{org.slug}/usage")
    page = response.get_data(as_text=True)
    assert response.status_code == 200 and "9,000</strong> of 10,000 calls" in page
    assert "banner-quota" not in page
