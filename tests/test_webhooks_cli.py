"""``flask webhooks add / list / remove``: the same services as the pages, audited as "CLI"; bad input is a
clear error with a non-zero exit and writes nothing."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from portal.extensions import db
from portal.models import AuditEvent, WebhookEndpoint
from portal.notify import endpoints, webhooks
from tests import factories


@pytest.fixture
def cli(app):
    runner = app.test_cli_runner()
    return lambda *args: runner.invoke(args=list(args))


def _endpoints(org):
    return list(db.session.scalars(sa.select(WebhookEndpoint).filter_by(organization_id=org.id)))


def _audits(org):
    return list(
        db.session.scalars(
            sa.select(AuditEvent).where(AuditEvent.organization_id == org.id, AuditEvent.action.startswith("webhook."))
        )
    )


def _printed(output):
    """The ``id`` and ``secret`` lines of ``webhooks add``."""
    return dict(line.split(None, 1) for line in output.splitlines() if line.startswith(("id ", "secret ")))


def test_add_prints_the_id_and_the_secret_once(cli, org):
    result = cli("webhooks", "add", "--org", org.slug, "--url", "https://hooks.example.com/a", "--description", "Ops")
    assert result.exit_code == 0, result.output
    printed = _printed(result.output)
    (endpoint,) = _endpoints(org)
    assert printed["id"] == str(endpoint.id)
    assert endpoints.signing_keys(endpoint).current == endpoints.secret_bytes(printed["secret"])
    assert endpoint.events == ["*"] and endpoint.description == "Ops"  # no --event: all events
    (audit,) = _audits(org)
    assert audit.action == "webhook.created" and audit.actor_label == "CLI" and audit.actor_id is None
    assert audit.details["url"] == "https://hooks.example.com/a"
    assert printed["secret"].removeprefix("whsec_") not in str(audit.details)


def test_add_with_chosen_events(cli, org):
    result = cli(
        "webhooks", "add", "--org", org.slug, "--url", "https://hooks.example.com/b",
        "--event", "quota.threshold", "--event", "key.revoked", "--event", "key.revoked",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (endpoint,) = _endpoints(org)
    assert endpoint.events == ["key.revoked", "quota.threshold"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--url", "https://hooks.example.com/", "--event", "key.nope"], "Unknown event 'key.nope'"),
        (["--url", "http://hooks.example.com/"], "Enter an https URL"),
        (["--url", "https://10.1.2.3/"], "Enter a public address"),
        (["--url", "https://user:pw@hooks.example.com/"], "Leave credentials out of the URL"),
        (["--url", "https://hooks.example.com/" + "x" * 2000], "at most 2000 characters"),
    ],
)
def test_add_refuses_bad_input_and_writes_nothing(cli, org, public_only, args, message):
    result = cli("webhooks", "add", "--org", org.slug, *args)
    assert result.exit_code != 0
    assert message in result.output
    assert "secret" not in result.output
    assert _endpoints(org) == [] and _audits(org) == []


def test_add_to_an_unknown_organization_fails(cli):
    result = cli("webhooks", "add", "--org", "no-such-org", "--url", "https://hooks.example.com/")
    assert result.exit_code != 0 and "no organization with slug 'no-such-org'" in result.output


def test_add_stops_at_the_endpoint_limit(cli, org):
    for n in range(webhooks.MAX_ENDPOINTS):
        webhooks.create_endpoint(org, url=f"https://h{n}.example.com/", events=[], actor=None, actor_label="CLI")
    result = cli("webhooks", "add", "--org", org.slug, "--url", "https://one-more.example.com/")
    assert result.exit_code == 1 and "the most it can have" in result.output
    assert len(_endpoints(org)) == webhooks.MAX_ENDPOINTS


def test_list_shows_id_status_url_and_events_never_a_secret(cli, org):
    added = cli("webhooks", "add", "--org", org.slug, "--url", "https://a.example.com/", "--event", "key.created")
    secret = _printed(added.output)["secret"]
    issued = webhooks.create_endpoint(org, url="https://b.example.com/", events=["*"], actor=None, actor_label="t")
    webhooks.pause(org, issued.endpoint, actor=None, actor_label="t")
    result = cli("webhooks", "list", "--org", org.slug)
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.output.splitlines()]
    first, second = sorted(_endpoints(org), key=lambda e: e.url)
    assert [str(first.id), "active", "https://a.example.com/", "key.created"] in rows
    assert [str(second.id), "paused", "https://b.example.com/", "all", "events"] in rows
    assert secret not in result.output and secret.removeprefix("whsec_") not in result.output
    assert issued.secret not in result.output


def test_list_of_an_organization_without_endpoints(cli, org):
    result = cli("webhooks", "list", "--org", org.slug)
    assert result.exit_code == 0 and f"no webhook endpoints in {org.slug}" in result.output


def test_remove_deletes_and_audits_as_cli(cli, org):
    owner = factories.member(org, "owner")
    issued = webhooks.create_endpoint(org, url="https://gone.example.com/", events=["*"], actor=owner)
    endpoint_id = issued.endpoint.id
    result = cli("webhooks", "remove", str(endpoint_id))
    assert result.exit_code == 0, result.output
    assert "removed https://gone.example.com/" in result.output
    assert db.session.get(WebhookEndpoint, endpoint_id) is None
    (deleted,) = [a for a in _audits(org) if a.action == "webhook.deleted"]
    assert deleted.actor_label == "CLI" and deleted.details["url"] == "https://gone.example.com/"


@pytest.mark.parametrize("endpoint_id", ["not-a-uuid", "00000000-0000-4000-8000-000000000000"])
def test_remove_of_an_unknown_id_fails(cli, endpoint_id):
    result = cli("webhooks", "remove", endpoint_id)
    assert result.exit_code == 1 and f"no webhook endpoint with id {endpoint_id}" in result.output


def test_help_lists_the_commands_with_examples(cli):
    result = cli("webhooks", "--help")
    assert result.exit_code == 0
    for command in ("add", "list", "remove"):
        assert command in result.output
    add_help = cli("webhooks", "add", "--help").output
    assert "flask webhooks add --org acme" in add_help and "key.revoked" in add_help
