"""What a usage page shows: the time range, the bucket size and the time zone, parsed from the query string.

Bad input never fails the page: each problem becomes a message shown above the chart, and a sensible default
is used instead. Ranges are whole UTC hours (the rollups' grain); in a zone with a half-hour offset a local
day starts at the whole UTC hour before its midnight.
"""

from __future__ import annotations

import functools
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

HOUR = timedelta(hours=1)
PRESETS: dict[str, timedelta] = {
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}
RANGE_LABELS = {"24h": "Last 24 hours", "7d": "Last 7 days", "30d": "Last 30 days", "custom": "Custom"}
BUCKETS = ("hour", "day")
DEFAULT_RANGE = "7d"
MAX_HOURLY_SPAN = timedelta(days=31)
COMMON_ZONES = (
    "UTC",
    "America/Los_Angeles",
    "America/Denver",
    "America/Chicago",
    "America/New_York",
    "America/Sao_Paulo",
    "Europe/London",
    "Europe/Paris",
    "Europe/Berlin",
    "Europe/Kyiv",
    "Africa/Lagos",
    "Africa/Johannesburg",
    "Asia/Dubai",
    "Asia/Kolkata",
    "Asia/Singapore",
    "Asia/Shanghai",
    "Asia/Tokyo",
    "Australia/Sydney",
    "Pacific/Auckland",
)


@functools.cache
def known_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones()) | {"UTC"}


def valid_zone(name: str | None) -> str | None:
    """``name`` if it is an IANA zone we know (checked against the list, never opened as a path)."""
    return name if name and len(name) <= 64 and name in known_zones() else None


def floor_hour(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def local_midnight(day: date, tz: ZoneInfo) -> datetime:
    """The UTC hour in which ``day`` begins in ``tz``."""
    return floor_hour(datetime(day.year, day.month, day.day, tzinfo=tz))


@dataclass
class UsageRange:
    """A resolved request: ``[start, end)`` in UTC, whole hours, plus how to bucket and label it."""

    key: str
    bucket: str
    tz: ZoneInfo
    start: datetime
    end: datetime
    messages: list[str] = field(default_factory=list)
    custom_start: str = ""
    custom_end: str = ""

    @property
    def tz_name(self) -> str:
        return self.tz.key

    @property
    def label(self) -> str:
        return RANGE_LABELS[self.key]

    def bucket_starts(self) -> list[datetime]:
        """Every bucket in the range, empty ones included, as UTC instants."""
        if self.bucket == "hour":
            count = int((self.end - self.start) / HOUR)
            return [self.start + i * HOUR for i in range(count)]
        starts = [self.start]
        day = self.start.astimezone(self.tz).date() + timedelta(days=1)
        while (moment := local_midnight(day, self.tz)) < self.end:
            if moment > starts[-1]:
                starts.append(moment)
            day += timedelta(days=1)
        return starts

    def bucket_label(self, moment: datetime) -> str:
        local = moment.astimezone(self.tz)
        return local.strftime("%Y-%m-%d %H:%M") if self.bucket == "hour" else local.strftime("%Y-%m-%d")

    def describe(self) -> str:
        first = self.start.astimezone(self.tz).strftime("%Y-%m-%d %H:%M")
        last = self.end.astimezone(self.tz).strftime("%Y-%m-%d %H:%M")
        return f"{first} – {last} ({self.tz_name})"


def _parse_date(value: str | None) -> date | None:
    try:
        return date.fromisoformat(value or "")
    except ValueError:
        return None


def _zone(args: Mapping[str, str], tz_cookie: str | None, messages: list[str]) -> ZoneInfo:
    """The ``tz`` argument, else the remembered cookie, else UTC."""
    tz_arg = args.get("tz")
    tz_name = valid_zone(tz_arg) or valid_zone(tz_cookie) or "UTC"
    if tz_arg and not valid_zone(tz_arg):
        messages.append(f"Unknown time zone “{tz_arg[:64]}”; showing {tz_name}.")
    return ZoneInfo(tz_name)


def _custom_span(
    custom_start: str,
    custom_end: str,
    *,
    tz: ZoneInfo,
    now: datetime,
    end: datetime,
    max_days: int,
    messages: list[str],
) -> tuple[datetime, datetime] | None:
    """``[start, end)`` of a custom range of local days, cut to what is kept; ``None`` when it cannot be shown."""
    first, last = _parse_date(custom_start), _parse_date(custom_end)
    today = now.astimezone(tz).date()
    if first is None or last is None:
        messages.append("A custom range needs a start and an end date (YYYY-MM-DD); showing the last 7 days.")
        return None
    if last < first:
        messages.append("The end date is before the start date; showing the last 7 days.")
        return None
    if first > today:
        messages.append("The start date is in the future; showing the last 7 days.")
        return None
    last, oldest = min(last, today), today - timedelta(days=max_days - 1)
    if last < oldest:
        messages.append(
            f"Usage is kept for {max_days} days, nothing before {oldest.isoformat()}; showing the last 7 days."
        )
        return None
    if first < oldest:
        first = oldest
        messages.append(f"Usage is kept for {max_days} days; the range now starts on {first.isoformat()}.")
    return local_midnight(first, tz), min(local_midnight(last + timedelta(days=1), tz), end)


def _bucket(requested: str | None, span: timedelta, messages: list[str]) -> str:
    """Hours for a week or less, days beyond; hourly buckets stop at :data:`MAX_HOURLY_SPAN`."""
    default = "hour" if span <= PRESETS["7d"] else "day"
    bucket = requested or default
    if bucket not in BUCKETS:
        messages.append(f"Unknown bucket “{bucket[:20]}”; use hour or day.")
        bucket = default
    if bucket == "hour" and span > MAX_HOURLY_SPAN:
        messages.append("Hourly buckets are available for ranges up to 31 days; showing days.")
        bucket = "day"
    return bucket


def parse_range(args: Mapping[str, str], *, tz_cookie: str | None, now: datetime, max_days: int) -> UsageRange:
    """Resolve ``range``, ``bucket``, ``tz``, ``start``, ``end`` from the query string (and the tz cookie)."""
    messages: list[str] = []
    tz = _zone(args, tz_cookie, messages)
    key = args.get("range") or DEFAULT_RANGE
    if key not in RANGE_LABELS:
        messages.append(f"Unknown range “{key[:20]}”; showing the last 7 days.")
        key = DEFAULT_RANGE
    end = floor_hour(now) + HOUR
    custom_start, custom_end = args.get("start", ""), args.get("end", "")
    start = end - PRESETS.get(key, PRESETS[DEFAULT_RANGE])
    if key == "custom":
        span = _custom_span(custom_start, custom_end, tz=tz, now=now, end=end, max_days=max_days, messages=messages)
        if span is None:
            key = DEFAULT_RANGE
        else:
            start, end = span
    bucket = _bucket(args.get("bucket"), end - start, messages)
    if bucket == "day" and key != "custom":
        start = local_midnight(start.astimezone(tz).date(), tz)
    return UsageRange(key, bucket, tz, start, end, messages, custom_start[:10], custom_end[:10])
