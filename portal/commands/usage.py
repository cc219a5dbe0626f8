"""``flask usage``: simulate traffic, keep the daily partitions, prune old raw events and invalid-key counts,
rebuild rollups, replay spill files."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import click
import psycopg2
from flask import current_app

from portal.api import spill_directory
from portal.commands import org_or_fail
from portal.db import redacted
from portal.timeutil import utcnow
from portal.usage import maintenance, partitions
from portal.usage import simulate as sim
from portal.verification import spill
from portal.verification.backend import libpq_dsn


@click.group("usage")
def usage() -> None:
    """Usage data: simulate, partitions, prune, rebuild rollups, replay spill files."""


@usage.command("simulate")
@click.option("--org", "slugs", required=True, multiple=True, help="Organization slug (repeat for several).")
@click.option("--events", type=click.IntRange(1, 1_000_000_000), default=100_000, show_default=True)
@click.option("--days", type=click.FloatRange(0.01, 400), default=30, show_default=True)
@click.option(
    "--keys",
    "key_count",
    type=click.IntRange(1, 10_000),
    default=5,
    show_default=True,
    help="Use this many keys per organization, adding simulated ones (secrets discarded) if it has fewer.",
)
@click.option("--chunk", type=click.IntRange(1_000, 2_000_000), default=200_000, show_default=True)
@click.option("--jobs", type=click.IntRange(1, 16), default=1, show_default=True, help="Connections inserting at once.")
@click.option("--vacuum/--no-vacuum", default=True, show_default=True, help="VACUUM ANALYZE afterwards.")
def simulate(
    slugs: tuple[str, ...], events: int, days: float, key_count: int, chunk: int, jobs: int, vacuum: bool
) -> None:
    """Generate realistic traffic in bulk (through the same insert trigger that keeps the rollups); with several
    organizations, the first one's keys are the busiest."""
    orgs = [org_or_fail(slug) for slug in slugs]
    started = time.perf_counter()
    with click.progressbar(length=events, label=f"Simulating {events:,} calls", show_pos=True) as bar:
        sim.simulate(
            orgs,
            events,
            days,
            key_count=key_count,
            chunk=chunk,
            progress=bar.update,
            vacuum_pending=vacuum,
            jobs=jobs,
        )
    took = time.perf_counter() - started
    if vacuum:
        click.echo("VACUUM ANALYZE …")
        sim.vacuum_analyze()
    names = slugs[0] if len(slugs) == 1 else f"{len(slugs)} organizations"
    click.echo(f"{events:,} calls over {days:g} days for {names} in {took:.1f} s ({events / took:,.0f} calls/s)")


def _retention(older_than: str | None) -> timedelta:
    try:
        age = maintenance.parse_age(older_than or f"{current_app.config['USAGE_RAW_RETENTION_DAYS']}d")
        partitions.cutoff_for(age)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return age


def _dropped(dropped: list[partitions.Partition], age: timedelta) -> str:
    if not dropped:
        return f"No partition of raw events is older than {_age(age)}."
    size = _size(sum(p.bytes for p in dropped))
    if all(p.rows >= 0 for p in dropped):
        size += f", about {sum(p.rows for p in dropped):,} rows"
    return (
        f"Dropped {len(dropped)} partition{'s' if len(dropped) != 1 else ''} of raw events older than {_age(age)}"
        f" ({dropped[0].start:%Y-%m-%d} to {dropped[-1].end - timedelta(days=1):%Y-%m-%d}; {size})."
    )


def _age(age: timedelta) -> str:
    return f"{age.days} days" if age.days * 86_400 == age.total_seconds() else f"{age.total_seconds() / 3600:g} hours"


@usage.command("prune")
@click.option("--older-than", default=None, help="Age like 90d (default: USAGE_RAW_RETENTION_DAYS).")
@click.option(
    "--rollups-older-than",
    default=None,
    help="Also drop rollups older than this (default: USAGE_ROLLUP_RETENTION_DAYS).",
)
def prune(older_than: str | None, rollups_older_than: str | None) -> None:
    """Drop raw events (whole days) and invalid-key counts past retention; rollups (and the records of replayed
    spill files, which keep a replay from counting in them twice) keep the history far longer."""
    raw_age = _retention(older_than)
    try:
        rollup_age = maintenance.parse_age(
            rollups_older_than or f"{current_app.config['USAGE_ROLLUP_RETENTION_DAYS']}d"
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if rollup_age < raw_age:
        raise click.BadParameter("rollups must be kept at least as long as raw events")
    dropped = maintenance.prune_raw(raw_age)
    invalid = maintenance.prune_invalid_key_counts(raw_age)
    rollups = maintenance.prune_rollups(rollup_age)
    replays = maintenance.prune_spill_replays(rollup_age)
    click.echo(_dropped(dropped, raw_age))
    click.echo(
        f"Deleted {_many(invalid, 'invalid-key count')} older than {_age(raw_age)}, and {_many(rollups, 'rollup row')}"
        f" and {_many(replays, 'record')} of replayed spill files older than {_age(rollup_age)}."
    )


def _many(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


@usage.group("partitions")
def partitions_group() -> None:
    """The daily partitions of raw events: list, create ahead, drop expired."""


@partitions_group.command("list")
def partitions_list() -> None:
    """Every partition: its UTC day, estimated rows and size on disk; and the tables a prune detached but did not
    drop (the next prune drops those past retention)."""
    found = partitions.listing()
    detached = partitions.leftovers()
    if not found:
        click.echo("api_key_usage has no partitions: every write fails until `flask usage partitions create`.")
        if not detached:
            return
    cutoff = partitions.cutoff_for(_retention(None))  # as `flask usage prune` without options
    click.echo(f"{'partition':<26}{'UTC day':<12}{'rows (est.)':>14}{'size':>12}")
    for p in sorted([*found, *detached], key=lambda p: p.start):
        rows = f"{p.rows:,}" if p.rows >= 0 else "?"
        note = ""
        if p.detaching:
            note = "  (detach pending)"
        elif p.detached:
            note = "  (detached, to be dropped)" if p.end <= cutoff else "  (detached, kept until past retention)"
        click.echo(f"{p.name:<26}{p.start:%Y-%m-%d}  {rows:>14}{_size(p.bytes):>12}{note}")
    if detached:
        plural = "s" if len(detached) != 1 else ""
        click.echo(
            f"{len(detached)} table{plural} detached by a prune that did not drop {'them' if plural else 'it'}"
            f" ({_size(sum(p.bytes for p in detached))}); `flask usage prune` drops those past retention."
        )
    if found:
        ahead = (found[-1].end - timedelta(days=1)).date() - utcnow().date()
        click.echo(
            f"{len(found)} partitions, {found[0].start:%Y-%m-%d} to {found[-1].end - timedelta(days=1):%Y-%m-%d};"
            f" {_size(sum(p.bytes for p in found))}; {ahead.days} days ahead of today."
        )


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    raise AssertionError


@partitions_group.command("create")
@click.option(
    "--ahead",
    type=click.IntRange(0, 365),
    default=None,
    help="Days ahead of today (default: USAGE_PARTITIONS_AHEAD_DAYS).",
)
def partitions_create(ahead: int | None) -> None:
    """Create the partitions from today to N days ahead that do not exist yet (the workers do this too)."""
    days = current_app.config["USAGE_PARTITIONS_AHEAD_DAYS"] if ahead is None else ahead
    created = partitions.ensure_ahead(days)
    plural = "s" if created != 1 else ""
    click.echo(f"Created {created} partition{plural}; partitions cover today to {days} days ahead.")


@partitions_group.command("drop-expired")
@click.option("--older-than", default=None, help="Age like 90d (default: USAGE_RAW_RETENTION_DAYS).")
def partitions_drop(older_than: str | None) -> None:
    """Detach and drop the partitions whose every row is older than the retention (rollups stay)."""
    age = _retention(older_than)
    click.echo(_dropped(maintenance.prune_raw(age), age))


@usage.command("fold")
def fold_pending() -> None:
    """Move pending usage sums into the rollups now (pages do this too; handy from cron every minute)."""
    moved = maintenance.fold()
    clients = maintenance.fold_clients()
    click.echo(f"Folded {moved:,} pending rollup rows and {clients:,} pending client rows.")


@usage.command("rebuild-rollups")
@click.option("--org", "slug", default=None, help="Only this organization.")
@click.option(
    "--since",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    default=None,
    help="UTC day to rebuild from (default: the first whole day of raw events still kept).",
)
def rebuild(slug: str | None, since: datetime | None) -> None:
    """Recompute rollups from raw events (after a restore or a manual fix); writers wait meanwhile."""
    org_id = org_or_fail(slug).id if slug else None
    start = maintenance.rebuild_rollups(org_id, since.replace(tzinfo=UTC) if since else None)
    click.echo("No raw events to rebuild from." if start is None else f"Rollups rebuilt from {start:%Y-%m-%d}.")


@usage.command("replay")
def replay() -> None:
    """Write the usage rows that workers stopped during a database outage kept in spill files (each file once).

    Workers starting do this on their own; this is for when none will start soon. Files that cannot be read
    whole are set aside as *.rejected, and the command then fails.
    """
    directory = spill_directory(current_app)
    if directory is None:
        raise click.ClickException("spill files are off (API_USAGE_SPILL_DIR is empty)")
    files = spill.pending(directory)
    if not files:
        click.echo(f"No spill files in {directory}.")
        return
    url = current_app.config["SQLALCHEMY_DATABASE_URI"]
    try:
        conn = psycopg2.connect(libpq_dsn(url), application_name="procode-usage-replay")
    except psycopg2.OperationalError as exc:
        reason = str(exc).strip().splitlines()[0]
        raise click.ClickException(f"cannot connect to the database at {redacted(url)}: {reason}") from None
    try:
        done = spill.replay(conn, directory)
    except psycopg2.Error as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise click.ClickException(f"the database stopped answering ({reason}); the files not written stay") from None
    finally:
        conn.close()
    click.echo(
        f"Replayed {done.files:,} spill files from {directory}: {done.rows:,} usage rows and "
        f"{done.invalid_key_calls:,} invalid-key calls written"
        + (f", {done.refused:,} usage rows refused by the database (logged)" if done.refused else "")
        + (f"; {done.already:,} files had been written already and were removed" if done.already else "")
        + "."
    )
    for name in done.waiting:
        click.echo(f"Waiting: {name} (a transaction that may have written it is still open; run again later)")
    if done.rejected:
        raise click.ClickException("set aside, not replayed: " + "; ".join(done.rejected))
