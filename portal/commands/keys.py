from __future__ import annotations

import uuid

import click

from portal.commands import org_or_fail
from portal.extensions import db
from portal.keys import services
from portal.keys.policy import KeyPolicy
from portal.models import ApiKey
from portal.scopes import SCOPES


@click.group("keys")
def keys() -> None:
    """Create and revoke API keys."""


def _meta(pairs: tuple[str, ...]) -> dict[str, str]:
    meta: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"expected key=value, got {pair!r}", param_hint="--meta")
        meta[name] = value
    return meta


@keys.command("create")
@click.option("--org", "slug", required=True, help="Organization slug.")
@click.option("--env", "environment", type=click.Choice(["test", "live"]), default="test", show_default=True)
@click.option("--name", required=True)
@click.option("--scope", "scopes", multiple=True, type=click.Choice(SCOPES), help="Restrict the key (repeatable).")
@click.option("--allow-ip", "allowed_ips", multiple=True, metavar="CIDR", help="Allowed address or network.")
@click.option("--meta", "meta", multiple=True, metavar="KEY=VALUE", help="Metadata returned by verifications.")
@click.option("--rate-limit", type=click.IntRange(min=1), help="Requests per minute for this key alone.")
@click.option("--external-id", help="Your own id for the key, unique in the organization.")
def create(
    slug: str,
    environment: str,
    name: str,
    scopes: tuple[str, ...],
    allowed_ips: tuple[str, ...],
    meta: tuple[str, ...],
    rate_limit: int | None,
    external_id: str | None,
) -> None:
    """Create a key and print it (only the key, on stdout, once)."""
    org = org_or_fail(slug)
    key_policy = KeyPolicy(
        scopes=list(scopes) or None,
        allowed_ips=list(allowed_ips),
        rate_limit=rate_limit,
        meta=_meta(meta),
        external_id=external_id,
    )
    try:
        issued = services.create_key(
            org, name=name, environment=environment, actor=None, actor_label="CLI", key_policy=key_policy
        )
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
