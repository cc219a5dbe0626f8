"""Range, bucket and time-zone choices: bad input becomes a message and a sensible default, never an error."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from portal.usage.ranges import parse_range

NOW = datetime(2026, 11, 24, 9, 41, tzinfo=UTC)


def parse(tz_cookie=None, **args):
    return parse_range(args, tz_cookie=tz_cookie, now=NOW, max_days=400)


def test_presets_end_with_the_current_hour():
    r = parse(range="24h")
    assert (r.start, r.end, r.bucket, r.messages) == (
        datetime(2026, 11, 23, 10, tzinfo=UTC),
        datetime(2026, 11, 24, 10, tzinfo=UTC),
        "hour",
        [],
    )
    assert len(r.bucket_starts()) == 24
    assert parse(range="30d").bucket == "day"


def test_day_buckets_follow_the_members_time_zone():
    r = parse(range="7d", bucket="day", tz="Europe/Berlin")
    starts = r.bucket_starts()
    # Berlin is UTC+1 in November: each local day starts at 23:00 UTC the day before.
    assert starts[0] == datetime(2026, 11, 16, 23, tzinfo=UTC)
    assert all(s.hour == 23 for s in starts) and len(starts) == 8
    assert r.bucket_label(starts[-1]) == "2026-11-24"


def test_a_daylight_saving_day_has_23_hours():
    r = parse(range="custom", start="2026-03-07", end="2026-03-09", bucket="day", tz="America/New_York")
    starts = r.bucket_starts()
    assert [b - a for a, b in zip(starts, starts[1:] + [r.end], strict=True)] == [
        timedelta(hours=24),
        timedelta(hours=23),
        timedelta(hours=24),
    ]


def test_bad_input_falls_back_with_a_message():
    r = parse(range="fortnight", bucket="minute", tz="Mars/Olympus_Mons")
    assert (r.key, r.bucket, r.tz_name) == ("7d", "hour", "UTC")
    assert len(r.messages) == 3
    assert "Unknown time zone" in r.messages[0]


def test_custom_range_checks():
    assert "before the start" in parse(range="custom", start="2026-11-20", end="2026-11-01").messages[0]
    assert "YYYY-MM-DD" in parse(range="custom", start="yesterday", end="2026-11-01").messages[0]
    assert "future" in parse(range="custom", start="2027-01-01", end="2027-01-02").messages[0]
    long = parse(range="custom", start="2020-01-01", end="2026-11-20")
    assert "kept for 400 days" in long.messages[0] and long.bucket == "day"
    assert long.end - long.start <= timedelta(days=400)
    ancient = parse(range="custom", start="0001-01-01", end="0001-01-02")
    assert "nothing before" in ancient.messages[0] and ancient.key == "7d"
    hourly = parse(range="custom", start="2026-09-01", end="2026-11-20", bucket="hour")
    assert hourly.bucket == "day" and "up to 31 days" in hourly.messages[0]


def test_custom_range_is_whole_local_days_and_stops_at_now():
    r = parse(range="custom", start="2026-11-20", end="2026-11-30", tz="Asia/Tokyo")
    assert r.start == datetime(2026, 11, 19, 15, tzinfo=UTC)
    assert r.end == datetime(2026, 11, 24, 10, tzinfo=UTC)


def test_zone_cookie_is_used_when_valid_and_ignored_otherwise():
    assert parse(tz_cookie="Asia/Kolkata").tz_name == "Asia/Kolkata"
    assert parse(tz_cookie="../../etc/passwd").tz_name == "UTC"
    assert parse(tz_cookie="Asia/Kolkata", tz="Europe/Paris").tz_name == "Europe/Paris"
