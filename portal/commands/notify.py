"""``flask notify run``: fire the scheduled events that are due (for cron, where no web process runs them)."""

from __future__ import annotations

import click

from portal.notify import scheduler


@click.group("notify")
def notify_group() -> None:
    """Notifications: the scheduled events (expiring, expired and idle keys, quota, rate limit)."""


@notify_group.command("run")
@click.option("-v", "--verbose", is_flag=True, help="Also say when nothing was due.")
def run(verbose: bool) -> None:
    """Fire the scheduled events that are due, once. Quiet when nothing fired (for cron); each event fires
    once however often, or from however many places, this runs."""
    fired = scheduler.run_once()
    if not fired:
        if verbose:
            click.echo("another pass is running; it fires what is due")
        return
    for event_type, count in fired.items():
        if count:
            click.echo(f"{event_type}: {count}")
    if verbose and not any(fired.values()):
        click.echo("nothing due")
