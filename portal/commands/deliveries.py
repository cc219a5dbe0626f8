"""``flask webhooks deliver``: send the webhook deliveries that are due, once (cron-friendly).

The ``flask webhooks`` group lives in portal/commands/webhooks.py; it calls :func:`register` to add this.
"""

from __future__ import annotations

import click

from portal.notify import delivery
from portal.notify.delivery_results import DeliveryResult


def register(group: click.Group) -> None:
    group.add_command(deliver)


@click.command("deliver")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Stop after about this many deliveries.")
def deliver(limit: int | None) -> None:
    """Send the webhook deliveries that are due, then stop (web processes also do this in a background thread)."""
    total = DeliveryResult()
    while True:
        batch = delivery.BATCH if limit is None else min(delivery.BATCH, limit - total.claimed)
        result = delivery.deliver_due(limit=batch)
        total.claimed += result.claimed
        total.delivered += result.delivered
        total.retrying += result.retrying
        total.failed += result.failed
        total.disabled += result.disabled
        if result.claimed < batch or (limit is not None and total.claimed >= limit):
            break  # nothing else is due (or only deliveries to endpoints left alone this pass)
    click.echo(f"delivered {total.delivered}, will retry {total.retrying}, gave up on {total.failed}")
    if total.disabled:
        click.echo(f"disabled {len(total.disabled)} endpoint(s) that failed for a whole retry schedule", err=True)
