"""What members and staff see on the usage pages, and what they can download."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from portal.extensions import db
from portal.models import ApiKey
from portal.timeutil import utcnow
from portal.usage.ranges import floor_hour
from tests import factories
from tests.usage_helpers import csv_rows, event, html_tables, record


@pytest.fixture
def busy_key(org, owner):
    """A live key with calls in the last hours, plus one test-key call; dashboard-ready."""
    live = factories.api_key(org, owner, environment="live", name="Billing worker").api_key
    test = factories.api_key(org, owner, environment="test", name="Staging").api_key
    hour = floor_hour(datetime.now(UTC))
    record(
        [
            event(
                live,
                hour - timedelta(hours=h, minutes=-m),
                "ok" if m % 6 else "rate_limited",
                endpoint="/v1/translate" if m % 3 else "/v1/embed",
            )
            for h in range(5)
            for m in range(0, 60, 5)
        ]
        + [event(test, hour - timedelta(hours=30), "revoked")]
    )
    return live


def numbers(cells):
    return [c.replace(",", "") for c in cells]


def test_dashboard_shows_totals_chart_data_and_tables(client, auth, org, owner, busy_key):
    auth.login(owner)
    response = client.get(f"/orgs/{org.slug}/usage?range=7d")
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert 'id="usage-data"' in html and 'type="application/json"' in html
    assert "chart-4.6.1.umd.min.js" in html
    tables = html_tables(html)
    series = tables["table-series"]
    assert series[0][:2] == ["Hour starting (UTC)", "Calls"]
    assert sum(int(numbers(row)[1]) for row in series[1:]) == 61
    assert tables["table-keys"][1][0].startswith("Billing worker")
    assert [row[0] for row in tables["table-endpoints"][1:]] == ["/v1/translate", "/v1/embed"]
    assert "calls in the Free plan" in html


@pytest.mark.parametrize("table", ["series", "keys", "endpoints"])
def test_csv_is_exactly_the_table_on_the_page(client, auth, org, owner, busy_key, table):
    auth.login(owner)
    query = "range=custom&start=2026-11-01&end=2030-01-01&bucket=day&tz=Europe/Berlin"
    page_rows = html_tables(client.get(f"/orgs/{org.slug}/usage?{query}").get_data(as_text=True))[f"table-{table}"]
    response = client.get(f"/orgs/{org.slug}/usage.csv?{query}&table={table}")
    assert response.status_code == 200 and response.mimetype == "text/csv"
    assert csv_rows(response.data) == [numbers(row) if i else row for i, row in enumerate(page_rows)]


def test_key_page_csv_is_the_table_too(client, auth, org, owner, busy_key):
    auth.login(owner)
    page = client.get(f"/orgs/{org.slug}/keys/{busy_key.id}/usage?range=24h&tz=Asia/Tokyo")
    rows = html_tables(page.get_data(as_text=True))["table-series"]
    csv = client.get(f"/orgs/{org.slug}/keys/{busy_key.id}/usage.csv?range=24h&tz=Asia/Tokyo&table=series")
    assert csv_rows(csv.data) == [numbers(row) if i else row for i, row in enumerate(rows)]
    assert rows[0][0] == "Hour starting (Asia/Tokyo)"


def test_bad_range_bucket_and_zone_show_a_message_not_an_error(client, auth, org, owner, busy_key):
    auth.login(owner)
    response = client.get(f"/orgs/{org.slug}/usage?range=1y&bucket=week&tz=Nowhere/Special")
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "Unknown range" in html and "Unknown bucket" in html and "Unknown time zone" in html
    response = client.get(f"/orgs/{org.slug}/usage?range=custom&start=2026-11-20&end=2026-11-02")
    assert response.status_code == 200 and "end date is before the start date" in response.get_data(as_text=True)
    assert client.get(f"/orgs/{org.slug}/usage.csv?table=secrets").status_code == 404


def test_time_zone_choice_is_remembered(client, auth, org, owner, busy_key):
    auth.login(owner)
    response = client.get(f"/orgs/{org.slug}/usage?tz=America/New_York")
    assert "tz=America/New_York" in response.headers["Set-Cookie"]
    html = client.get(f"/orgs/{org.slug}/usage").get_data(as_text=True)
    assert "Hour starting (America/New_York)" in html


def test_key_page_lists_recent_calls_with_pages(client, auth, org, owner, busy_key, app):
    auth.login(owner)
    app.config["USAGE_RECENT_PER_PAGE"] = 50
    first = client.get(f"/orgs/{org.slug}/keys/{busy_key.id}/usage").get_data(as_text=True)
    recent = html_tables(first)["table-recent"]
    assert len(recent) == 51 and 'rel="next"' in first
    second = client.get(f"/orgs/{org.slug}/keys/{busy_key.id}/usage?page=2").get_data(as_text=True)
    assert len(html_tables(second)["table-recent"]) == 1 + 10 and 'rel="next"' not in second
    assert "Last used" in first and "never" not in first.split("Last used")[1][:40]


def test_empty_states_offer_the_curl_line(client, auth, org, owner):
    key = factories.api_key(org, owner).api_key
    auth.login(owner)
    html = client.get(f"/orgs/{org.slug}/usage").get_data(as_text=True)
    assert "No calls yet" in html and "curl -H" in html
    assert html.count("malformed or unknown key cannot be tied to an organization") == 1
    html = client.get(f"/orgs/{org.slug}/keys/{key.id}/usage").get_data(as_text=True)
    assert "No calls with this key yet" in html and key.hint in html


def test_another_organizations_key_is_not_found(client, auth, org, owner, busy_key):
    other = factories.org()
    intruder = factories.member(other, "owner")
    auth.login(intruder)
    assert client.get(f"/orgs/{other.slug}/keys/{busy_key.id}/usage").status_code == 404
    assert client.get(f"/orgs/{other.slug}/keys/{busy_key.id}/usage.csv").status_code == 404
    assert client.get(f"/orgs/{org.slug}/usage").status_code == 404
    assert client.get(f"/orgs/{other.slug}/keys/not-a-uuid/usage").status_code == 404


def test_staff_see_any_organization_read_only(client, auth, org, owner, member, staff, busy_key):
    url = f"/staff/orgs/{org.id}/usage"
    assert client.get(url).status_code == 404  # signed out
    auth.login(member)
    assert client.get(url).status_code == 404  # members do not know the staff area exists
    auth.logout()
    auth.login(staff)
    response = client.get(url + "?range=24h")
    html = response.get_data(as_text=True)
    assert response.status_code == 200 and "Staff view" in html and org.name in html
    assert html_tables(html)["table-keys"][1][0].startswith("Billing worker")
    assert client.get(f"/staff/orgs/{org.id}/usage.csv?table=keys").status_code == 200
    assert client.get(f"/staff/orgs/{org.slug}/usage").status_code == 200  # the slug works too
    assert client.get("/staff/orgs/no-such-org/usage").status_code == 404


@pytest.mark.parametrize(
    ("tz", "expected"),
    [
        ("UTC", [["2026-11-20", "2"], ["2026-11-21", "1"]]),
        # Berlin is UTC+1: 23:00 UTC is already midnight of the 21st there.
        ("Europe/Berlin", [["2026-11-20", "1"], ["2026-11-21", "2"]]),
    ],
)
def test_day_buckets_split_at_local_midnight(client, auth, org, owner, tz, expected):
    key = factories.api_key(org, owner).api_key
    record(
        [
            event(key, datetime(2026, 11, 20, 22, 59, 59, 999999, tzinfo=UTC)),
            event(key, datetime(2026, 11, 20, 23, 0, tzinfo=UTC)),
            event(key, datetime(2026, 11, 21, 0, 0, tzinfo=UTC)),
        ]
    )
    auth.login(owner)
    query = f"range=custom&start=2026-11-20&end=2026-11-21&bucket=day&tz={tz}"
    for url in (f"/orgs/{org.slug}/usage?{query}", f"/orgs/{org.slug}/keys/{key.id}/usage?{query}"):
        rows = html_tables(client.get(url).get_data(as_text=True))["table-series"]
        assert [row[:2] for row in rows[1:]] == expected


@pytest.mark.parametrize(
    "query",
    [
        "range=custom&start=0001-01-01&end=0001-01-02",
        "range=custom&start=2026-02-30&end=2026-03-01",
        "range=custom&start=9999-12-31&end=9999-12-31",
        "range=custom&start=2026-11-01&end=9999-12-31&bucket=hour",
        "range=%01&bucket=%F0%9F%92%A5&tz=..%2F..%2Fetc%2Fpasswd",
        "tz=Asia/Kolkata&bucket=day&range=30d&page=-4",
        "page=99999999999999999999&range=24h",
    ],
)
def test_odd_queries_never_break_the_pages(client, auth, org, owner, busy_key, query):
    auth.login(owner)
    for url in (
        f"/orgs/{org.slug}/usage?{query}",
        f"/orgs/{org.slug}/keys/{busy_key.id}/usage?{query}",
        f"/orgs/{org.slug}/usage.csv?{query}",
    ):
        assert client.get(url).status_code == 200, url
    # NUL cannot reach PostgreSQL at all: every page refuses it up front with a 400.
    assert client.get(f"/orgs/{org.slug}/usage?range=%00").status_code == 400


def test_no_always_empty_invalid_key_series(client, auth, org, owner, busy_key):
    """Malformed/unknown keys carry no organization, so the org and key pages show no "Invalid key" numbers."""
    auth.login(owner)
    dashboard = client.get(f"/orgs/{org.slug}/usage?range=7d").get_data(as_text=True)
    key_page = client.get(f"/orgs/{org.slug}/keys/{busy_key.id}/usage?range=7d").get_data(as_text=True)
    outcomes = ["OK", "Rate-limited", "Over quota", "Refused by policy", "Revoked/expired"]
    assert html_tables(dashboard)["table-series"][0][1:] == ["Calls", *outcomes, "Live", "Test"]
    assert html_tables(key_page)["table-series"][0][1:] == ["Calls", *outcomes]
    csvs = [
        client.get(f"/orgs/{org.slug}/usage.csv?range=7d&table=series").data,
        client.get(f"/orgs/{org.slug}/keys/{busy_key.id}/usage.csv?range=7d&table=series").data,
    ]
    for body in (dashboard, key_page, *(c.decode() for c in csvs)):
        assert "Invalid" not in body
    assert csv_rows(csvs[0])[0][1:] == ["Calls", *outcomes, "Live", "Test"]
    note = "malformed or unknown key cannot be tied to an organization"
    assert dashboard.count(note) == 1 and note not in key_page


def test_csv_defuses_formula_cells_the_page_shows_plain(client, auth, org, owner):
    """A spreadsheet would run "=…", "+…", "-…", "@…" cells; the CSV makes them text, the page shows them as is."""
    key = factories.api_key(org, owner, environment="live", name="=HYPERLINK(1)").api_key
    risky = ["=SUM(A1:A9)", "+1", "-2", "@cmd"]
    hour = floor_hour(datetime.now(UTC))
    record([event(key, hour - timedelta(hours=1), endpoint=e) for e in risky for _ in range(risky.index(e) + 1)])
    auth.login(owner)
    html = client.get(f"/orgs/{org.slug}/usage?range=24h").get_data(as_text=True)
    shown = [row[0] for row in html_tables(html)["table-endpoints"][1:]]
    assert shown == list(reversed(risky))
    exported = csv_rows(client.get(f"/orgs/{org.slug}/usage.csv?range=24h&table=endpoints").data)
    assert [row[0] for row in exported[1:]] == [f"'{e}" for e in reversed(risky)]
    assert html_tables(html)["table-keys"][1][0].startswith("=HYPERLINK(1)")
    keys_csv = csv_rows(client.get(f"/orgs/{org.slug}/usage.csv?range=24h&table=keys").data)
    assert keys_csv[1][0].startswith("'=HYPERLINK(1)")


def test_top_keys_link_to_their_key_pages(client, auth, org, owner, busy_key):
    auth.login(owner)
    html = client.get(f"/orgs/{org.slug}/usage?range=7d").get_data(as_text=True)
    keys_table = html.split('id="table-keys"', 1)[1].split("</table>", 1)[0]
    links = re.findall(r'<th scope="row"><a href="([^"]+)">', keys_table)
    test_key = db.session.scalar(sa.select(ApiKey).where(ApiKey.name == "Staging"))
    assert links == [f"/orgs/{org.slug}/keys/{busy_key.id}/usage", f"/orgs/{org.slug}/keys/{test_key.id}/usage"]
    assert client.get(links[0]).status_code == 200


def test_series_table_splits_live_and_test(client, auth, org, owner, busy_key):
    auth.login(owner)
    html = client.get(f"/orgs/{org.slug}/usage?range=7d&bucket=day").get_data(as_text=True)
    rows = html_tables(html)["table-series"]
    live, test = rows[0].index("Live"), rows[0].index("Test")
    assert sum(int(numbers(r)[live]) for r in rows[1:]) == 60
    assert sum(int(numbers(r)[test]) for r in rows[1:]) == 1


def test_staff_usage_page_has_nothing_to_submit(client, auth, org, staff, busy_key):
    auth.login(staff)
    html = client.get(f"/staff/orgs/{org.id}/usage?range=7d").get_data(as_text=True)
    main = html.split('<main id="main"', 1)[1].split("</main>", 1)[0]
    assert "Staff view" in main and "table-series" in main
    assert '<form method="post"' not in main.lower()
    # The only POST form on the whole page is signing out, in the navigation (its row and its phone menu).
    assert set(re.findall(r'<form method="post" action="([^"]+)"', html, re.IGNORECASE)) == {"/logout"}


def test_key_page_shows_its_top_endpoints(client, auth, org, owner, busy_key):
    auth.login(owner)
    html = client.get(f"/orgs/{org.slug}/keys/{busy_key.id}/usage?range=24h").get_data(as_text=True)
    endpoints = html_tables(html)["table-endpoints"]
    assert endpoints[0] == ["Endpoint", "Calls", "Errors"]
    assert [(r[0], numbers(r)[1]) for r in endpoints[1:]] == [("/v1/translate", "40"), ("/v1/embed", "20")]


def test_policy_refusals_and_quota_stops_have_their_own_series(client, auth, org, owner):
    key = factories.api_key(org, owner).api_key
    at = utcnow() - timedelta(hours=1)
    outcomes = ["ok", "ok", "forbidden", "quota_exceeded", "quota_exceeded", "quota_exceeded", "revoked"]
    record([event(key, at, outcome) for outcome in outcomes])
    db.session.commit()
    auth.login(owner)
    html = client.get(f"/orgs/{org.slug}/keys/{key.id}/usage?range=24h").get_data(as_text=True)
    header, *rows = html_tables(html)["table-series"]
    totals = [sum(int(r[i]) for r in rows) for i in range(1, len(header))]
    assert dict(zip(header[1:], totals, strict=True)) == {
        "Calls": 7,
        "OK": 2,
        "Rate-limited": 0,
        "Over quota": 3,
        "Refused by policy": 1,
        "Revoked/expired": 1,
    }
