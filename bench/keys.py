"""The key list with many keys: 10,000 keys in one organization, list, pages, search and filters, p50/p95.

    make bench-keys                       # PostgreSQL at 127.0.0.1:5432 (BENCH_DATABASE_URL), a fresh database
    .venv/bin/python bench/keys.py --requests 50 --explain   # quicker, and print each view's query plans

Steps: create a fresh database and migrate it; an owner, four colleagues who created keys, and two Enterprise
organizations: one with 10,000 keys, the baseline one with 100, both with the same mix (test and live; active,
rolled in their grace period, expired and revoked; full access and scoped; used and never used; some with an
external id). The rows are inserted in bulk, not through the create form, so the plan's key limit does not
apply. Start gunicorn with the shipped gunicorn.conf.py on a loopback port (18200-18299), sign in over HTTP
like a browser, and time each view in both organizations (sequential requests, measured by the client). PASS
when every view's p95 in the big organization is within 50 ms; the ratio to the baseline shows what the
10,000 keys cost.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402
from flask import Flask  # noqa: E402

from bench.harness import bench_server_url  # noqa: E402
from bench.usage import (  # noqa: E402
    EMAIL,
    PASSWORD,
    Browser,
    build_app,
    drop_database,
    pct,
    start_gunicorn,
    stop_gunicorn,
)
from portal.db import ensure_database, normalize_url  # noqa: E402
from portal.extensions import db  # noqa: E402

TARGET_P95_MS = 50.0
CREATORS = ("Ada Admin", "Bo Backend", "Cy Contractor", "Di Data")

# Names read like a real organization's keys: a service and what runs it, so a search finds a share of them.
KEYS_SQL = """
INSERT INTO api_keys (organization_id, name, environment, hint, key_hash, created_by_id, created_at,
                      expires_at, revoked_at, last_used_at, scopes, external_id)
SELECT :org,
       (ARRAY['billing','checkout','search','reports','mobile','partner','etl','webhooks','support','analytics',
              'inventory','shipping','pricing','auth','notifications','ledger','catalog','crm','warehouse',
              'fraud'])[1 + i % 20]
         || ' ' || (ARRAY['worker','api','cron','client','gateway','job','sync'])[1 + (i / 20) % 7]
         || ' ' || i,
       env,
       'pk_' || env || '_' || substr(md5(i::text || :salt), 1, 4) || '…' || substr(md5(:salt || i::text), 1, 4),
       sha256((:salt || i::text)::bytea),
       (:creators ::uuid[])[1 + (i * 7) % cardinality(:creators ::uuid[])],
       now() - (i * interval '1 hour') * (17520.0 / :n),  -- spread over two years, newest first
       CASE WHEN i % 20 = 7 THEN now() - interval '1 day' * (1 + i % 90) END,  -- 5% expired
       CASE WHEN i % 10 = 3 THEN now() - interval '1 day' * (1 + i % 300)      -- 10% revoked
            WHEN i % 20 = 9 THEN now() + interval '1 hour' * (1 + i % 72) END, -- 5% rolled, in grace
       CASE WHEN i % 5 < 3 THEN now() - interval '1 minute' * ((i * 7919) % 43200) END,  -- 60% used lately
       CASE WHEN i % 2 = 0 THEN NULL
            ELSE (ARRAY[ARRAY['files:read','search:read'], ARRAY['complete:write','embed:write'],
                        ARRAY['translate:read','translate:write'], ARRAY['moderate:read','classify:read']])
                 [1 + i % 4][1:2] END,
       CASE WHEN i % 5 < 2 THEN 'cust-' || lpad(i::text, 6, '0') END
FROM generate_series(1, :n) AS i,
     LATERAL (SELECT CASE WHEN i % 10 < 3 THEN 'live' ELSE 'test' END AS env) AS e
"""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=10_000, help="keys in the big organization")
    parser.add_argument("--baseline-keys", type=int, default=100, help="keys in the baseline organization")
    parser.add_argument("--requests", type=int, default=200, help="timed requests per view and organization")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--explain", action="store_true", help="print EXPLAIN ANALYZE of each view's statements")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards (prints its URL)")
    return parser.parse_args()


def create_database(admin: str) -> tuple[str, str]:
    name = f"procode_bench_keys_{secrets.token_hex(3)}"
    ensure_database(admin, name)
    url = sa.make_url(admin).set(database=name).render_as_string(hide_password=False)
    print(f"database: {sa.make_url(url).render_as_string(hide_password=True)}")
    return name, url


def load(args: argparse.Namespace) -> dict[str, Any]:
    """Migrate, create the people and both organizations, insert the keys; returns what the views need."""
    from flask_migrate import upgrade

    from portal.auth import services as auth
    from portal.models import Membership
    from portal.orgs.services import create_organization

    upgrade()
    owner = auth.create_user(EMAIL, "Bench Owner", PASSWORD, verified=True)
    big = create_organization("Bench Corp", owner, plan="enterprise", slug="bench")
    small = create_organization("Bench Baseline", owner, plan="enterprise", slug="baseline")
    creators = [owner.id]
    for n, name in enumerate(CREATORS):
        colleague = auth.create_user(f"colleague{n}@procode.dev", name, PASSWORD, verified=True)
        for org in (big, small):
            db.session.add(Membership(user_id=colleague.id, organization_id=org.id, role="developer"))
        creators.append(colleague.id)
    db.session.flush()
    for org, count in ((big, args.keys), (small, args.baseline_keys)):
        db.session.execute(
            sa.text(KEYS_SQL),
            {"org": org.id, "n": count, "salt": secrets.token_hex(8), "creators": [str(c) for c in creators]},
        )
    db.session.commit()
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE api_keys"))
    counts = db.session.execute(
        sa.text("SELECT organization_id, count(*) FROM api_keys GROUP BY 1 ORDER BY 2 DESC")
    ).all()
    print("keys: " + ", ".join(f"{n:,}" for _, n in counts) + " (big organization, baseline)")
    return {"creator": creators[2], "pages": {"bench": -(-args.keys // 20), "baseline": -(-args.baseline_keys // 20)}}


def views(slug: str, last_page: int, creator: uuid.UUID) -> list[tuple[str, str]]:
    """Each timed view of one organization's key list: a label and the path."""
    base = f"/orgs/{slug}/keys/"
    return [
        ("list, page 1", base),
        ("list, last page", f"{base}?page={last_page}"),
        ("search by name", f"{base}?q=checkout"),
        ("search by external id", f"{base}?q=cust-000041"),
        ("filtered and sorted", f"{base}?env=live&status=active&scope=full&sort=last_used"),
        ("creator, oldest first", f"{base}?creator={creator}&sort=oldest"),
    ]


def explain(app: Flask, slug: str, path: str) -> None:
    """EXPLAIN ANALYZE of each statement the list service runs for ``path``, as it runs them."""
    from urllib.parse import parse_qsl, urlsplit

    from portal.keys import listing, services
    from portal.orgs.services import find_org

    with app.app_context():
        org = find_org(slug)
        args = dict(parse_qsl(urlsplit(path).query))
        creators = [user.id for user in services.key_creators(org)] if org else []
        filters, _ = listing.parse(args, creators)
        captured: list[tuple[str, Any]] = []

        def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
            captured.append((statement, parameters))

        sa.event.listen(db.engine, "before_cursor_execute", capture)
        try:
            services.list_keys(org, filters, page=int(args.get("page", 1)), per_page=20)  # type: ignore[arg-type]
        finally:
            sa.event.remove(db.engine, "before_cursor_execute", capture)
        for statement, parameters in captured:
            if "FROM users" in statement:
                continue  # the creators' names, by primary key
            plan = db.session.connection().exec_driver_sql(
                "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + statement, parameters
            )
            for (line,) in plan:
                print(f"      {line}")
            print()
        db.session.rollback()


Result = tuple[str, list[float], list[float]]


def timed_pair(browser: Browser, path: str, baseline: str, requests: int, warm_up: int = 10) -> tuple[list[float], ...]:
    """``requests`` GETs of ``path`` and of ``baseline``, alternating, after ``warm_up`` untimed pairs: a busy
    machine's slow spells then fall on both alike, and the ratio stays fair."""
    samples: tuple[list[float], list[float]] = ([], [])
    for n in range(warm_up + requests):
        for target, timed in zip((path, baseline), samples, strict=True):
            status, body, elapsed = browser.request("GET", target)
            if status != 200 or b"keys/revoke-selected" not in body:
                raise SystemExit(f"{target} answered {status} without the key list")
            if n >= warm_up:
                timed.append(elapsed)
    return samples


def time_views(browser: Browser, cases: dict[str, list[tuple[str, str]]], requests: int) -> list[Result]:
    """Each view in the big organization and in the baseline one; prints one line per view."""
    results = []
    for (label, path), (_, baseline_path) in zip(cases["bench"], cases["baseline"], strict=True):
        big, small = timed_pair(browser, path, baseline_path, requests)
        results.append((label, big, small))
        print(
            f"{label:24} 10,000 keys p50 {pct(big, 0.5):6.1f} ms  p95 {pct(big, 0.95):6.1f} ms"
            f"  |  baseline p50 {pct(small, 0.5):6.1f} ms  p95 {pct(small, 0.95):6.1f} ms"
            f"  |  x{pct(big, 0.5) / pct(small, 0.5):4.2f}",
            flush=True,
        )
    return results


def verdict(results: list[Result]) -> bool:
    worst_label, worst = max(((label, pct(big, 0.95)) for label, big, _ in results), key=lambda r: r[1])
    ok = worst <= TARGET_P95_MS
    print(f"target: every view's p95 <= {TARGET_P95_MS:.0f} ms; worst {worst_label} {worst:.1f} ms -> ", end="")
    print("PASS" if ok else "FAIL")
    return ok


def main() -> int:
    args = parse_args()
    admin = normalize_url(bench_server_url())
    name, url = create_database(admin)
    gunicorn = None
    try:
        app = build_app(url)
        with app.app_context():
            loaded = load(args)
        cases = {slug: views(slug, loaded["pages"][slug], loaded["creator"]) for slug in ("bench", "baseline")}
        if args.explain:
            for label, path in cases["bench"]:
                print(f"  {label}: {path}")
                explain(app, "bench", path)
        gunicorn, port = start_gunicorn(url, args.workers)
        browser = Browser(port)
        browser.login()
        print(
            f"gunicorn: {args.workers} workers (gunicorn.conf.py settings) on 127.0.0.1:{port};"
            f" {args.requests} sequential requests per view and organization"
        )
        return 0 if verdict(time_views(browser, cases, args.requests)) else 1
    finally:
        if gunicorn is not None:
            stop_gunicorn(gunicorn)
        if args.keep:
            print(f"kept: {url}")
        else:
            drop_database(admin, name)


if __name__ == "__main__":
    raise SystemExit(main())
