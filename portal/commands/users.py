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
    if staff:
        click.echo(
            "note: in production staff reach /staff only with two-factor authentication on "
            "(STAFF_REQUIRE_TWO_FACTOR); sign in and turn it on at /account/two-factor"
        )


@users.command("sign-out")
@click.argument("email")
def sign_out(email: str) -> None:
    """End every signed-in session of an account (e.g. a stolen laptop); it is noted in their security log."""
    from portal.account import security_log, sessions

    user = auth.find_user_by_email(email)
    if user is None:
        raise click.ClickException(f"no account with {email}")
    ended = sessions.end_all_sessions(user, "support")
    security_log.record(user, "sessions.revoked_all", ip=None, user_agent=None, sessions_ended=ended, by="support")
    db.session.commit()
    click.echo(f"signed out {ended} session{'s' if ended != 1 else ''} of {user.email}")


@users.command("prune-sessions")
@click.option("--days", default=30, show_default=True, help="Keep ended sessions this many days.")
def prune_sessions(days: int) -> None:
    """Delete sessions that ended more than --days ago (revoked, expired or long unused)."""
    from datetime import timedelta

    from portal.account import sessions

    deleted = sessions.prune(ended_before=timedelta(days=days))
    db.session.commit()
    click.echo(f"deleted {deleted} ended session{'s' if deleted != 1 else ''}")
