"""One definition of "active keys" on the keys page, the staff pages and the plan check; at the limit, Create key
is off with the reason and a way out; the quota bar's colour follows the month."""

from __future__ import annotations

from datetime import timedelta

from portal.extensions import db
from portal.keys import services as key_services
from portal.plans import PLANS
from portal.staff import services as staff_services
from tests import factories
from tests.usage_helpers import event, record

FREE_KEYS = PLANS["free"].max_keys


def _fill(org, owner, count):
    return [factories.api_key(org, owner, name=f"key {i}").api_key for i in range(count)]


def test_a_rolled_key_in_grace_counts_everywhere_and_the_page_says_so(client, auth, org, owner):
    keys = _fill(org, owner, FREE_KEYS)
    key_services.roll_key(org, keys[0], timedelta(hours=24), owner)  # allowed at the limit: now 6 keys work
    allowance = key_services.key_allowance(org)
    assert (allowance.active, allowance.in_grace, allowance.at_limit) == (FREE_KEYS + 1, 1, True)
    assert key_services.usable_key_count(org.id) == FREE_KEYS + 1
    assert staff_services.key_counts(org).active == FREE_KEYS + 1
    [row] = [r for r in staff_services.search_orgs(org.slug).items if r.org.id == org.id]
    assert row.active_keys == FREE_KEYS + 1
    auth.login(owner)
    page = client.get(f"/orgs/{org.slug}/keys/").get_data(as_text=True)
    assert f"{FREE_KEYS + 1} of {FREE_KEYS} active keys (including 1 rolled key still in its grace period)" in page


def test_the_staff_page_counts_active_keys_as_the_keys_page_does(client, auth, org, owner, staff):
    keys = _fill(org, owner, FREE_KEYS)
    key_services.roll_key(org, keys[0], timedelta(hours=24), owner)
    auth.login(staff)
    assert f"{FREE_KEYS + 1} of up to {FREE_KEYS}" in client.get(f"/staff/orgs/{org.slug}").get_data(as_text=True)


def test_at_the_limit_create_is_off_with_the_reason_and_a_way_out(client, auth, org, owner, app):
    _fill(org, owner, FREE_KEYS)
    auth.login(owner)
    page = client.get(f"/orgs/{org.slug}/keys/").get_data(as_text=True)
    assert 'disabled aria-describedby="key-limit">Create key</button>' in page
    assert "mailto:support@procode.dev" in page and "upgrade or ask for more keys" in page
    form = client.get(f"/orgs/{org.slug}/keys/new").get_data(as_text=True)
    assert 'id="key-limit"' in form and "Create key</button>" not in form
    refused = client.post(f"/orgs/{org.slug}/keys/new", data={"name": "One more", "environment": "test"})
    assert refused.status_code == 422 and key_services.usable_key_count(org.id) == FREE_KEYS
    app.config["UPGRADE_URL"] = "https://procode.dev/pricing"
    try:
        assert "https://procode.dev/pricing" in client.get(f"/orgs/{org.slug}/keys/").get_data(as_text=True)
    finally:
        app.config["UPGRADE_URL"] = None


def test_below_the_limit_create_is_a_link(client, auth, org, owner):
    _fill(org, owner, FREE_KEYS - 1)
    auth.login(owner)
    page = client.get(f"/orgs/{org.slug}/keys/").get_data(as_text=True)
    assert f'href="/orgs/{org.slug}/keys/new">Create key</a>' in page and 'id="key-limit"' not in page


def test_the_quota_bar_turns_near_then_over(client, auth, org, owner):
    from portal.timeutil import utcnow

    key = factories.api_key(org, owner).api_key
    quota = PLANS["free"].monthly_quota
    auth.login(owner)

    def level() -> str:
        page = client.get(f"/orgs/{org.slug}/usage").get_data(as_text=True)
        return page.split('class="quota-bar quota-')[1].split('"')[0]

    at = utcnow()  # this month
    record([event(key, at)] * 10)
    db.session.commit()
    assert level() == "ok"
    record([event(key, at)] * int(quota * 0.85))
    db.session.commit()
    assert level() == "near"
    record([event(key, at)] * int(quota * 0.2))
    db.session.commit()
    assert level() == "over"


def test_the_environment_switch_stays_on_the_keys_page_and_keeps_the_other_filters(client, auth, org, owner):
    factories.api_key(org, owner, name="Sandbox")
    factories.api_key(org, owner, name="Production", environment="live")
    auth.login(owner)
    page = client.get(f"/orgs/{org.slug}/keys/?env=live&sort=oldest").get_data(as_text=True)
    switch = page.split('class="tabs env-switch"')[1].split("</nav>")[0]
    assert 'aria-current="page" class="env-switch-live">Live</a>' in switch
    assert "env=test" in switch and "sort=oldest" in switch
    assert "Production" in page and "Sandbox" not in page.split("</nav>", 2)[-1]
