"""``flask`` commands. Each calls the same services as the web pages."""

from __future__ import annotations

from flask import Flask


def register(app: Flask) -> None:
    from portal.commands import keys, mail, orgs, ratelimit, seed, usage, users

    for group in (
        seed.seed,
        users.users,
        orgs.orgs,
        keys.keys,
        ratelimit.ratelimit_group,
        usage.usage,
        mail.mail_group,
    ):
        app.cli.add_command(group)
