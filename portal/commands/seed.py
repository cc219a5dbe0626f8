from __future__ import annotations

import click
import sqlalchemy as sa
from flask import current_app

from portal.auth import services as auth
from portal.extensions import db
from portal.keys import services as keys
from portal.models import ApiKey, Membership
from portal.orgs.services import create_organization, find_org
from portal.roles import OWNER

DEMO_OWNER = ("demo@procode.dev", "Demo Owner", "demo-password")
DEMO_STAFF = ("support@procode.dev", "ProCode Support", "support-password")


@click.command("seed")
def seed() -> None:
    """Load demo data (organization, owner, support user, a test key); development only, safe to rerun."""
    if current_app.config["ENV_NAME"] not in ("development", "testing"):
        raise click.ClickException(
            "flask seed creates accounts with published passwords; it runs only with PORTAL_ENV=development."
        )
    owner = auth.find_user_by_email(DEMO_OWNER[0]) or auth.create_user(*DEMO_OWNER, verified=True)
    staff = auth.find_user_by_email(DEMO_STAFF[0]) or auth.create_user(*DEMO_STAFF, is_staff=True, verified=True)
    staff.is_staff = True
    org = find_org("default")
    if org is None:
        org = create_organization("Default Organization", owner, slug="default")
    elif db.session.scalar(sa.select(Membership).filter_by(user_id=owner.id, organization_id=org.id)) is None:
        db.session.add(Membership(user_id=owner.id, organization_id=org.id, role=OWNER))
    db.session.commit()

    has_key = db.session.scalar(sa.select(sa.exists().where(ApiKey.organization_id == org.id)))
    click.echo(f"Demo owner:   {DEMO_OWNER[0]} / {DEMO_OWNER[2]}")
    click.echo(f"Demo support: {DEMO_STAFF[0]} / {DEMO_STAFF[2]}  (staff area at /staff)")
    if not has_key:
        issued = keys.create_key(org, name="Demo test key", environment="test", actor=owner, actor_label="seed")
        click.echo(f"Demo test key (shown once): {issued.plaintext}")
    else:
        click.echo("Demo organization already has keys; none created.")
