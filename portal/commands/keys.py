from __future__ import annotations

import uuid

import click

from portal.commands import org_or_fail
from portal.extensions import db
from portal.keys import services
from portal.models import ApiKey


@click.group("keys")
def keys() -> None:
    """Create and revoke API keys."""


@keys.command("create")
@click.option("--org", "slug", required=True, help="Organization slug.")
@click.option("--env", "environment", type=click.Choice(["test", "live"]), default="test", show_default=True)
@click.option("--name", required=True)
def create(slug: str, environment: str, name: str) -> None:
    """Create a key and print it (only the key, on stdout, once)."""
    org = org_or_fail(slug)
    try:
        issued = services.create_key(org, name=name, environment=environment, actor=None, actor_label="CLI")
    except services.KeyActionError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(issued.plaintext)
    click.echo(f"created {issued.api_key.hint} ({issued.api_key.id}) in {slug}", err=True)


@keys.command("revoke")
@click.argument("key_id")
def revoke(key_id: str) -> None:
    """Revoke a key by its id."""
    try:
        api_key = db.session.get(ApiKey, uuid.UUID(key_id))
    except ValueError:
        api_key = None
    if api_key is None:
        raise click.ClickException(f"no key with id {key_id}")
    try:
        services.revoke_key(api_key.organization, api_key, actor=None, actor_label="CLI")
    except services.KeyActionError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"revoked {api_key.hint}")
