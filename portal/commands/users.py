from __future__ import annotations

import click

from portal.auth import services as auth
from portal.extensions import db


@click.group("users")
def users() -> None:
    """Manage portal accounts."""


@users.command("create")
@click.argument("email")
@click.option("--name", default=None, help="Display name (defaults to the part before @).")
@click.option("--staff", is_flag=True, help="Give access to the support staff area.")
@click.password_option(help="Password (prompted for when omitted).")
def create(email: str, name: str | None, staff: bool, password: str) -> None:
    """Create an account."""
    if len(password) < 10:
        raise click.BadParameter("use at least 10 characters", param_hint="password")
    try:
        user = auth.create_user(email, name or email.split("@")[0], password, is_staff=staff)
    except auth.EmailTaken:
        raise click.ClickException(f"an account with {email} already exists") from None
    db.session.commit()
    click.echo(f"created {'staff ' if staff else ''}user {user.email} ({user.id})")
    if staff:
        click.echo(
            "note: in production staff reach /staff only with two-factor authentication on "
            "(STAFF_REQUIRE_TWO_FACTOR); sign in and turn it on at /account/two-factor"
        )
