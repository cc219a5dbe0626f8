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
    display_name = name or email.split("@")[0]
    try:
        auth.check_password_policy(password, email=email, name=display_name)
    except auth.WeakPassword as exc:
        raise click.BadParameter(str(exc), param_hint="password") from None
    try:
        user = auth.create_user(email, display_name, password, is_staff=staff)
    except auth.EmailTaken:
        raise click.ClickException(f"an account with {email} already exists") from None
    db.session.commit()
    click.echo(f"created {'staff ' if staff else ''}user {user.email} ({user.id})")
