"""Assemble what a usage page shows, once, for the HTML page and for each CSV export alike."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import abort, current_app, make_response, render_template, request, url_for

from portal.models import ApiKey, Organization
from portal.timeutil import utcnow
from portal.usage import maintenance, services
from portal.usage.ranges import COMMON_ZONES, RANGE_LABELS, UsageRange, parse_range, valid_zone
from portal.usage.services import Table

TZ_COOKIE = "tz"


def current_range() -> UsageRange:
    return parse_range(
        request.args,
        tz_cookie=request.cookies.get(TZ_COOKIE),
        now=utcnow(),
        max_days=current_app.config["USAGE_ROLLUP_RETENTION_DAYS"],
    )


def remember_zone(response: Any) -> Any:
    """Keep a valid ``tz`` choice in a cookie, so the member's zone sticks across pages."""
    tz = valid_zone(request.args.get("tz"))
    if tz and tz != request.cookies.get(TZ_COOKIE):
        response.set_cookie(
            TZ_COOKIE,
            tz,
            max_age=365 * 24 * 3600,
            samesite="Lax",
            secure=current_app.config["SESSION_COOKIE_SECURE"],
            httponly=True,
        )
    return response


@dataclass
class UsagePage:
    r: UsageRange
    summary: dict[str, Any]
    chart: dict[str, Any]
    tables: dict[str, Table]
    extra: dict[str, Any] = field(default_factory=dict)


def org_page(org: Organization, key_link: Callable[[Any], str | None]) -> UsagePage:
    r = current_range()
    maintenance.fold()
    series = services.org_series(org.id, r)
    tables = {
        "series": services.series_table(series, r),
        "keys": services.top_keys_table(services.top_keys(org.id, r), key_link),
        "endpoints": services.top_endpoints_org(org.id, r),
    }
    totals = services.summary(series)
    extra = {
        "quota": services.month_quota(org.id, org.plan_info, utcnow(), org.created_at),
        "has_any_usage": totals["calls"] > 0 or services.has_any_usage(org.id),
    }
    return UsagePage(r, totals, services.chart_data(series, r), tables, extra)


def key_page(org: Organization, api_key: ApiKey) -> UsagePage:
    r = current_range()
    maintenance.fold()
    series = services.key_series(api_key.id, r)
    tables = {
        "series": services.series_table(series, r),
        "endpoints": services.top_endpoints_key(api_key.id, r),
    }
    last = services.last_call_at(api_key.id)
    if api_key.last_used_at and (last is None or api_key.last_used_at > last):
        last = api_key.last_used_at
    return UsagePage(r, services.summary(series), services.chart_data(series, r), tables, {"last_call": last})


def csv_response(table: Table, filename: str) -> Any:
    """The table as CSV: same columns, same rows, raw numbers; cells a spreadsheet would run are defused."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(table.columns)
    for row in table.rows:
        writer.writerow([f"'{v}" if isinstance(v, str) and v[:1] in ("=", "+", "-", "@") else v for v in row])
    response = current_app.response_class(out.getvalue(), mimetype="text/csv")
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", filename)
    response.headers["Content-Disposition"] = f'attachment; filename="{safe}"'
    return response


def query_args(r: UsageRange) -> dict[str, str]:
    """The current choice as query parameters, for links (CSV, pagination, key pages) that keep it."""
    args = {"range": r.key, "bucket": r.bucket, "tz": r.tz_name}
    if r.key == "custom":
        args |= {"start": r.custom_start, "end": r.custom_end}
    return args


def table_or_404(page: UsagePage) -> Table:
    """The table the ``table`` query parameter names; an unknown name is a 404, as for any missing export."""
    table = page.tables.get(request.args.get("table", "series"))
    if table is None:
        abort(404)
    return table


def render(template: str, page: UsagePage, csv_endpoint: str, csv_args: dict[str, Any], **context: Any) -> Any:
    """A usage page with its range controls and CSV links, remembering the chosen zone."""
    args = query_args(page.r)
    response = make_response(
        render_template(
            template,
            page=page,
            r=page.r,
            range_labels=RANGE_LABELS,
            zones=COMMON_ZONES,
            args=args,
            api_base=current_app.config["PUBLIC_API_BASE"],
            csv_url=lambda table: url_for(csv_endpoint, **{**csv_args, **args, "table": table}),
            **context,
        )
    )
    return remember_zone(response)
