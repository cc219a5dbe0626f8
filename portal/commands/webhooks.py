"""``flask webhooks``: add, list and remove an organization's webhook endpoints, through the same services as
the webhook pages (portal/notify/webhooks.py), audited as "CLI".

A command defined elsewhere joins the group in one line: ``@webhooks.command("deliver")`` on its function, or
``webhooks.add_command(deliver)``.
"""

from __future__ import annotations

import uuid

import click

from portal.commands import deliveries, org_or_fail
from portal.extensions import db
from portal.models import Organization, WebhookEndpoint
from portal.notify import webhooks as services
from portal.notify.catalogue import EVENT_NAMES

CLI = "CLI"


@click.group("webhooks")
def webhooks() -> None:
    """Manage webhook endpoints (signed deliveries of an organization's events)."""


@webhooks.command("add")
@click.option("--org", "slug", required=True, help="Organization slug.")
@click.option("--url", required=True, help="The https URL that receives the events.")
@click.option(
    "--event",
    "event_names",
    multiple=True,
    metavar="NAME",
    help=f"An event to send (repeatable); none: all events. One of: {', '.join(EVENT_NAMES)}.",
)
@click.option("--description", default="", help="What receives the events, for your team.")
def add(slug: str, url: str, event_names: tuple[str, ...], description: str) -> None:
    """Add an endpoint; print its id and its signing secret (shown this once)."""
    org = org_or_fail(slug)
    try:
        issued = services.create_endpoint(
            org, url=url, events=list(event_names), description=description, actor=None, actor_label=CLI
        )
    except services.WebhookError as exc:
        hints = {"url": "--url", "events": "--event", "description": "--description"}
        if exc.field in hints:
            raise click.BadParameter(str(exc), param_hint=hints[exc.field]) from None
        raise click.ClickException(str(exc)) from None
    click.echo(f"id      {issued.endpoint.id}")
    click.echo(f"secret  {issued.secret}")
    click.echo(
        f"added {issued.endpoint.url} ({services.events_text(issued.endpoint.events)}) to {slug}; "
        "store the secret now, it is not shown again",
        err=True,
    )


@webhooks.command("list")
@click.option("--org", "slug", required=True, help="Organization slug.")
def list_(slug: str) -> None:
    """List the organization's endpoints: id, status, URL and events (never a secret)."""
    org = org_or_fail(slug)
    endpoints = services.list_endpoints(org)
    if not endpoints:
        click.echo(f"no webhook endpoints in {slug}", err=True)
        return
    for endpoint in endpoints:
        click.echo(f"{endpoint.id}  {endpoint.status:<8}  {endpoint.url}  {services.events_text(endpoint.events)}")


@webhooks.command("remove")
@click.argument("endpoint_id")
def remove(endpoint_id: str) -> None:
    """Delete an endpoint by its id, with its delivery log; unsent deliveries are dropped."""
    try:
        endpoint = db.session.get(WebhookEndpoint, uuid.UUID(endpoint_id))
    except ValueError:
        endpoint = None
    if endpoint is None:
        raise click.ClickException(f"no webhook endpoint with id {endpoint_id}")
    org = db.session.get(Organization, endpoint.organization_id)
    assert org is not None  # the foreign key holds it
    url = endpoint.url
    services.delete_endpoint(org, endpoint, actor=None, actor_label=CLI)
    click.echo(f"removed {url} from {org.slug}")


deliveries.register(webhooks)  # flask webhooks deliver
