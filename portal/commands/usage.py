"""``flask usage``: simulate traffic, prune old raw events and invalid-key counts, rebuild rollups, replay spill
files."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import click
import psycopg2
from flask import current_app

from portal.api import spill_directory
from portal.commands import org_or_fail
from portal.db import redacted
from portal.usage import maintenance
from portal.usage import simulate as sim
from portal.verification import spill
from portal.verification.backend import libpq_dsn


@click.group("usage")
def usage() -> None:
    """Usage data: simulate, prune, rebuild rollups, replay spill files."""


@usage.command("simulate")
@click.option("--org", "slug", required=True, help="Organization slug.")
@click.option("--events", type=click.IntRange(1, 1_000_000_000), default=100_000, show_default=True)
@click.option("--days", type=click.FloatRange(0.01, 400), default=30, show_default=True)
@click.option(
    "--keys",
    "key_count",
    type=click.IntRange(1, 10_000),
    default=5,
    show_default=True,
    help="Use this many keys, adding simulated ones (secrets discarded) if the org has fewer.",
)
@click.option("--chunk", type=click.IntRange(1_000, 2_000_000), default=200_000, show_default=True)
@click.option("--vacuum/--no-vacuum", default=True, show_default=True, help="VACUUM ANALYZE afterwards.")
def simulate(slug: str, events: int, days: float, key_count: int, chunk: int, vacuum: bool) -> None:
    """Generate realistic traffic in bulk (through the same insert trigger that keeps the rollups)."""
    org = org_or_fail(slug)
    started = time.perf_counter()
    with click.progressbar(length=events, label=f"Simulating {events:,} calls", show_pos=True) as bar:
        sim.simulate(org, events, days, key_count=key_count, chunk=chunk, progress=bar.update, vacuum_pending=vacuum)
    if vacuum:
        click.echo("VACUUM ANALYZE …")
        sim.vacuum_analyze()
    click.echo(f"{events:,} calls over {days:g} days for {slug} in {time.perf_counter() - started:.1f} s")


@usage.command("prune")
@click.option("--older-than", default=None, help="Age like 90d (default: USAGE_RAW_RETENTION_DAYS).")
@click.option(
    "--rollups-older-than",
    default=None,
    help="Also drop rollups older than this (default: USAGE_ROLLUP_RETENTION_DAYS).",
)
def prune(older_than: str | None, rollups_older_than: str | None) -> None:
    """Delete raw events and invalid-key counts past retention; rollups keep the history far longer."""
    try:
        raw_age = maintenance.parse_age(older_than or f"{current_app.config['USAGE_RAW_RETENTION_DAYS']}d")
        rollup_age = maintenance.parse_age(
            rollups_older_than or f"{current_app.config['USAGE_ROLLUP_RETENTION_DAYS']}d"
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if rollup_age < raw_age:
        raise click.BadParameter("rollups must be kept at least as long as raw events")
    raw = maintenance.prune_raw(raw_age)
    invalid = maintenance.prune_invalid_key_counts(raw_age)
    rollups = maintenance.prune_rollups(rollup_age)
    click.echo(
        f"Deleted {raw:,} raw events and {invalid:,} invalid-key counts older than {raw_age.days} days "
        f"and {rollups:,} rollup rows older than {rollup_age.days} days."
    )


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
