from __future__ import annotations

import click

from portal.commands import org_or_fail
from portal.orgs import services
from portal.plans import PLAN_NAMES


@click.group("orgs")
def orgs() -> None:
    """Manage organizations."""


@orgs.command("set-plan")
@click.argument("slug")
@click.argument("plan", type=click.Choice(PLAN_NAMES))
@click.option("--reason", default="changed from the command line", show_default=True)
def set_plan(slug: str, plan: str, reason: str) -> None:
    """Move an organization to another plan (audited)."""
    org = org_or_fail(slug)
    try:
        services.change_plan(org, plan, reason=reason, actor=None, actor_label="CLI")
    except services.OrgActionError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{slug} is now on the {plan} plan")
