"""``flask`` commands. Each calls the same services as the web pages; ``flask --help`` lists them."""

from __future__ import annotations

import click
from flask import Flask

# Shown at the end of each command's --help: what a developer or operator would type.
EXAMPLES: dict[str, tuple[str, ...]] = {
    "seed": ("flask seed",),
    "users create": (
        "flask users create ada@example.com --name 'Ada Lovelace'",
        "flask users create ops@example.com --staff",
    ),
    "users sign-out": ("flask users sign-out ada@example.com",),
    "users prune-sessions": ("flask users prune-sessions --days 30",),
    "orgs set-plan": ("flask orgs set-plan acme pro --reason 'annual contract'",),
    "keys create": ("flask keys create --org acme --env test --name 'CI runner'",),
    "keys revoke": ("flask keys revoke 6f1c0c3e-8d6a-4f7e-9a53-2b0f2c1d9e10",),
    "ratelimit prune": ("flask ratelimit prune --older-than 10",),
    "usage simulate": ("flask usage simulate --org acme --events 100000 --days 30",),
    "usage prune": ("flask usage prune --older-than 90d --rollups-older-than 400d",),
    "usage fold": ("flask usage fold",),
    "usage rebuild-rollups": ("flask usage rebuild-rollups --org acme --since 2026-11-01",),
    "usage replay": ("flask usage replay",),
    "mail send-pending": ("flask mail send-pending",),
    "mail list": ("flask mail list",),
    "mail test": ("flask mail test --to you@example.com",),
    "mail prune": ("flask mail prune --days 30",),
    "webhooks add": (
        "flask webhooks add --org acme --url https://example.com/hooks/procode",
        "flask webhooks add --org acme --url https://example.com/hooks --event key.revoked --event quota.threshold",
    ),
    "webhooks list": ("flask webhooks list --org acme",),
    "webhooks remove": ("flask webhooks remove 6f1c0c3e-8d6a-4f7e-9a53-2b0f2c1d9e10",),
    "webhooks deliver": ("flask webhooks deliver", "flask webhooks deliver --limit 1000"),
    "notify run": ("flask notify run", "flask notify run -v"),
}


def _with_examples(command: click.Command, path: str = "") -> None:
    name = f"{path} {command.name}".strip()
    examples = EXAMPLES.get(name)
    if examples and not command.epilog:
        command.epilog = "\b\nExamples:\n" + "\n".join(f"  {line}" for line in examples)
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _with_examples(sub, name)


def register(app: Flask) -> None:
    from portal.commands import keys, mail, notify, orgs, ratelimit, seed, usage, users, webhooks

    for group in (
        seed.seed,
        users.users,
        orgs.orgs,
        keys.keys,
        ratelimit.ratelimit_group,
        usage.usage,
        mail.mail_group,
        webhooks.webhooks,
        notify.notify_group,
    ):
        _with_examples(group)
        app.cli.add_command(group)
