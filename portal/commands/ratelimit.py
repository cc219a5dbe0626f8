from __future__ import annotations

from datetime import timedelta

import click
from flask import current_app

from portal import ratelimit
from portal.extensions import db
from portal.timeutil import utcnow


@click.group("ratelimit")
def ratelimit_group() -> None:
    """Rate-limit counters kept in rate_limit_tracking."""


@ratelimit_group.command("prune")
@click.option(
    "--older-than",
    "minutes",
    type=click.IntRange(min=1),
    default=60,
    show_default=True,
    help="Delete windows that started more than this many minutes ago.",
)
def prune(minutes: int) -> None:
    """Delete finished windows. The API's own one-minute windows are also pruned on the fly by each worker."""
    longest: timedelta = current_app.config["LOGIN_THROTTLE_WINDOW"]
    if timedelta(minutes=minutes) < longest:
        raise click.ClickException(f"--older-than must be at least {longest} (the sign-in throttle's window)")
    deleted = ratelimit.prune(utcnow() - timedelta(minutes=minutes))
    db.session.commit()
    click.echo(f"deleted {deleted} rate-limit windows older than {minutes} minutes")
