"""``flask usage`` commands: simulate realistic traffic, prune, rebuild."""

from __future__ import annotations

import sqlalchemy as sa

from portal.extensions import db
from portal.usage import maintenance


def count(sql: str, **params):
    return db.session.scalar(sa.text(sql), params)


def test_simulate_makes_realistic_traffic_that_the_rollups_match(app, org):
    result = app.test_cli_runner().invoke(
        args=[
            "usage",
            "simulate",
            "--org",
            org.slug,
            "--events",
            "20000",
            "--days",
            "3",
            "--keys",
            "4",
            "--chunk",
            "7000",
            "--no-vacuum",
        ]
    )
    assert result.exit_code == 0, result.output
    assert count("SELECT count(*) FROM api_key_usage WHERE organization_id = :o", o=org.id) == 20000
    assert count("SELECT count(*) FROM api_keys WHERE organization_id = :o", o=org.id) == 4
    assert count("SELECT sum(calls) FROM usage_org_hourly WHERE organization_id = :o", o=org.id) == 20000
    outcomes = dict(
        db.session.execute(
            sa.text("SELECT outcome, count(*) FROM api_key_usage WHERE organization_id = :o GROUP BY 1"),
            {"o": org.id},
        ).all()
    )
    assert set(outcomes) == {"ok", "rate_limited", "revoked", "expired"}
    assert 0.85 < outcomes["ok"] / 20000 < 0.97
    # A daily rhythm: the busiest hour of the day sees clearly more calls than the quietest.
    per_hour = [
        n
        for (n,) in db.session.execute(
            sa.text(
                "SELECT count(*) FROM api_key_usage WHERE organization_id = :o"
                " GROUP BY extract(hour FROM occurred_at AT TIME ZONE 'UTC')"
            ),
            {"o": org.id},
        )
    ]
    assert max(per_hour) > 1.4 * min(per_hour)
    assert maintenance.rollup_mismatches(org.id) == {}
    # The organization is as old as its simulated history, so the quota forecast paces over 7 days.
    first = count("SELECT min(occurred_at) FROM api_key_usage WHERE organization_id = :o", o=org.id)
    assert count("SELECT created_at FROM organizations WHERE id = :o", o=org.id) <= first


def test_unknown_org_and_bad_age_are_reported(app):
    runner = app.test_cli_runner()
    result = runner.invoke(args=["usage", "simulate", "--org", "nope", "--events", "10"])
    assert result.exit_code != 0 and "no organization" in result.output
    result = runner.invoke(args=["usage", "prune", "--older-than", "soon"])
    assert result.exit_code != 0 and "expected an age" in result.output


def test_rebuild_command_keeps_the_history_of_pruned_days(app, org):
    """Rollups outlive the raw events: a rebuild starts at the first whole day still kept (retention itself drops
    whole partitions; tests/test_usage_partitions.py)."""
    runner = app.test_cli_runner()
    runner.invoke(args=["usage", "simulate", "--org", org.slug, "--events", "3000", "--days", "10", "--no-vacuum"])
    db.session.execute(sa.text("DELETE FROM api_key_usage WHERE occurred_at < now() - interval '5 days'"))
    kept = count("SELECT count(*) FROM api_key_usage WHERE organization_id = :o", o=org.id)
    assert 0 < kept < 3000
    assert count("SELECT sum(calls) FROM usage_org_hourly WHERE organization_id = :o", o=org.id) == 3000
    result = runner.invoke(args=["usage", "rebuild-rollups", "--org", org.slug])
    assert result.exit_code == 0 and "rebuilt from" in result.output
    assert count("SELECT sum(calls) FROM usage_org_hourly WHERE organization_id = :o", o=org.id) == 3000
