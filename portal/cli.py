"""``flask`` commands. Each calls the same services as the web pages."""

from __future__ import annotations

from flask import Flask


def register(app: Flask) -> None:
    from portal.commands import keys, orgs, seed, usage, users

    for group in (seed.seed, users.users, orgs.orgs, keys.keys, usage.usage):
        app.cli.add_command(group)
