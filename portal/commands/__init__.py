"""Helpers the ``flask`` commands share."""

from __future__ import annotations

import click

from portal.models import Organization
from portal.orgs.services import find_org


def org_or_fail(slug: str) -> Organization:
    """The organization a command names, or a clean CLI error."""
    org = find_org(slug)
    if org is None:
        raise click.ClickException(f"no organization with slug {slug!r}")
    return org
