"""Scheduled events: expiring, expired and idle keys, quota thresholds and rate-limit refusals, each fired once
per key, threshold and period, driven by the pass's ``now``."""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from portal import create_app
from portal.extensions import db
from portal.keys import services as key_services
from portal.models import (
    NotificationEvent,
    Organization,
    OutboxMail,
    UsageRollupPending,
    User,
    WebhookDelivery,
    WebhookEndpoint,
)
from portal.notify import endpoints, scheduler
from portal.notify.scheduler import SCHEDULED_EVENTS, TURN_BUCKET, claim_turn, run_once
from portal.notify.scheduler_thread import EXTENSION as SCHEDULER_EXTENSION
from portal.timeutil import utcnow
from tests import factories
from tests.mail_helpers import deliver
from tests.usage_helpers import event, record

NOTHING = {
    "key.expiring": 0,
    "key.expired": 0,
    "key.idle": 0,
    "quota.threshold": 0,
    "ratelimit.exceeded": 0,
}


def fired(**counts: int) -> dict[str, int]:
    return {**NOTHING, **{name.replace("_", "."): n for name, n in counts.items()}}


def _events(org, kind):
    query = sa.select(NotificationEvent).filter_by(organization_id=org.id, type=kind)
    return list(db.session.scalars(query.order_by(NotificationEvent.occurred_at)))


def _hour(moment):
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _folded(org, at, *, ok=0, rate_limited=0):
    """Calls as the usage insert trigger sums them (usage_rollup_pending), for totals too big to insert one by one;
    the pass folds them into the rollups like any others."""
    db.session.add(
        UsageRollupPending(
            organization_id=org.id,
            environment="test",
            bucket=_hour(at),
            endpoint="/v1/translate",
            calls=ok + rate_limited,
            ok=ok,
            rate_limited=rate_limited,
        )
    )
    db.session.commit()


# Expiring and expired keys ----------------------------------------------------------------------------------


def test_a_key_is_warned_a_week_and_a_day_before_it_expires_then_told_it_expired(org, owner, mail_server):
    admin = factories.member(org, "admin")
    developer = factories.member(org, "developer")
    t0 = utcnow()
    expires = t0 + timedelta(days=6)
    api_key = factories.api_key(org, owner, name="Billing", expires_at=expires).api_key
    deliver(mail_server)  # nothing is mailed for the creation by default

    assert run_once(now=t0) == fired(key_expiring=1)
    [week] = _events(org, "key.expiring")
    assert week.dedupe_key.startswith(f"key.expiring:{api_key.id}:7:")
    assert week.payload["data"] == {
        "key": {
            "id": str(api_key.id),
            "name": "Billing",
            "hint": api_key.hint,
            "environment": "test",
            "expires_at": api_key.expires_at.isoformat(),
        },
        "days": 7,
    }
    assert week.occurred_at == t0
    sent = deliver(mail_server)
    assert sorted(r.rcpt_tos[0] for r in sent) == sorted([owner.email, admin.email])  # owners and admins
    assert developer.email not in [r.rcpt_tos[0] for r in sent]
    assert sent[0].message["Subject"] == f"[{org.name}] Key expiring soon"
    assert "expires in 7 days" in sent[0].part("plain") and api_key.hint in sent[0].part("plain")

    assert run_once(now=t0 + timedelta(hours=1)) == NOTHING  # once per warning
    assert deliver(mail_server) == []

    assert run_once(now=expires - timedelta(hours=20)) == fired(key_expiring=1)
    day = _events(org, "key.expiring")[-1]
    assert day.payload["data"]["days"] == 1
    assert "expires tomorrow" in deliver(mail_server)[0].part("plain")

    assert run_once(now=expires + timedelta(minutes=5)) == fired(key_expired=1)
    [expired] = _events(org, "key.expired")
    assert expired.payload["data"]["key"]["id"] == str(api_key.id)
    sent = deliver(mail_server)
    assert sorted(r.rcpt_tos[0] for r in sent) == sorted([owner.email, admin.email])
    assert sent[0].message["Subject"] == f"[{org.name}] Key expired"
    assert "expired; calls with it now fail" in sent[0].part("plain")

    assert run_once(now=expires + timedelta(days=1)) == NOTHING


def test_a_key_created_within_a_day_of_its_expiry_gets_the_one_day_warning_only(org, owner):
    t0 = utcnow()
    factories.api_key(org, owner, expires_at=t0 + timedelta(hours=10))
    assert run_once(now=t0) == fired(key_expiring=1)
    assert run_once(now=t0 + timedelta(hours=1)) == NOTHING
    assert [e.payload["data"]["days"] for e in _events(org, "key.expiring")] == [1]


def test_a_pass_that_missed_the_week_warning_sends_the_day_warning_only(org, owner):
    t0 = utcnow()
    expires = t0 + timedelta(days=6)
    factories.api_key(org, owner, expires_at=expires)
    assert run_once(now=expires - timedelta(hours=12)) == fired(key_expiring=1)
    assert run_once(now=expires - timedelta(hours=11)) == NOTHING
    assert [e.payload["data"]["days"] for e in _events(org, "key.expiring")] == [1]


def test_a_changed_expiry_warns_again(org, owner):
    t0 = utcnow()
    api_key = factories.api_key(org, owner, expires_at=t0 + timedelta(days=5)).api_key
    assert run_once(now=t0) == fired(key_expiring=1)
    key_services.set_expiry(org, api_key, t0 + timedelta(days=6), owner)
    assert run_once(now=t0) == fired(key_expiring=1)
    warnings = _events(org, "key.expiring")
    assert sorted(datetime.fromisoformat(e.payload["data"]["key"]["expires_at"]) for e in warnings) == [
        t0 + timedelta(days=5),
        t0 + timedelta(days=6),
    ]


def test_revoked_and_rolled_keys_are_not_warned_and_a_revoked_key_is_not_told_it_expired(org, owner):
    t0 = utcnow()
    expires = t0 + timedelta(days=3)
    revoked = factories.api_key(org, owner, name="revoked", expires_at=expires).api_key
    key_services.revoke_key(org, revoked, owner)
    rolled = factories.api_key(org, owner, name="rolled", expires_at=expires).api_key
    successor = key_services.roll_key(org, rolled, timedelta(hours=1), owner).api_key

    assert run_once(now=t0) == fired(key_expiring=1)
    [warning] = _events(org, "key.expiring")
    assert warning.payload["data"]["key"]["id"] == str(successor.id)  # the key that goes on working
    assert run_once(now=expires + timedelta(hours=1)) == fired(key_expired=1)
    assert [e.payload["data"]["key"]["id"] for e in _events(org, "key.expired")] == [str(successor.id)]


def test_a_first_pass_does_not_announce_expiries_older_than_a_week(org, owner):
    t0 = utcnow()
    expires = t0 + timedelta(hours=2)
    factories.api_key(org, owner, expires_at=expires)
    assert run_once(now=expires + timedelta(days=8)) == NOTHING
    assert run_once(now=expires + timedelta(days=6)) == fired(key_expired=1)


# Idle keys --------------------------------------------------------------------------------------------------


def test_idle_keys_are_off_until_the_organization_chooses_a_number_of_days(org, owner):
    factories.api_key(org, owner)
    assert org.idle_key_days is None
    assert run_once(now=utcnow() + timedelta(days=400)) == NOTHING


def test_an_idle_key_is_announced_once_per_idle_stretch(org, owner, mail_server):
    admin = factories.member(org, "admin")
    org.idle_key_days = 30
    db.session.commit()
    t0 = utcnow()
    api_key = factories.api_key(org, owner, name="Nightly").api_key
    deliver(mail_server)

    assert run_once(now=t0 + timedelta(days=29)) == NOTHING  # younger than the idle period
    assert run_once(now=t0 + timedelta(days=31)) == fired(key_idle=1)
    [first] = _events(org, "key.idle")
    assert first.payload["data"]["idle_days"] == 30 and first.payload["data"]["last_used_at"] is None
    assert first.payload["data"]["key"]["name"] == "Nightly"
    sent = deliver(mail_server)
    assert sorted(r.rcpt_tos[0] for r in sent) == sorted([owner.email, admin.email])
    assert "no calls for 30 days (last used: never)" in sent[0].part("plain")
    assert run_once(now=t0 + timedelta(days=45)) == NOTHING

    used = t0 + timedelta(days=50)
    api_key.last_used_at = used  # a call (verification keeps last_used_at)
    db.session.commit()
    assert run_once(now=t0 + timedelta(days=70)) == NOTHING
    assert run_once(now=t0 + timedelta(days=81)) == fired(key_idle=1)
    assert _events(org, "key.idle")[-1].payload["data"]["last_used_at"] == used.isoformat()
    assert run_once(now=t0 + timedelta(days=100)) == NOTHING


def test_revoked_and_expired_keys_are_not_idle(org, owner):
    org.idle_key_days = 7
    db.session.commit()
    t0 = utcnow()
    key_services.revoke_key(org, factories.api_key(org, owner).api_key, owner)
    factories.api_key(org, owner, expires_at=t0 + timedelta(days=3))
    assert run_once(now=t0 + timedelta(days=30)) == NOTHING


# Quota thresholds -------------------------------------------------------------------------------------------


def test_quota_thresholds_fire_at_80_and_100_percent_once_each_month(org, owner, mail_server):
    assert org.plan == "free"  # 10,000 calls a month, then calls stop
    admin = factories.member(org, "admin")
    api_key = factories.api_key(org, owner).api_key
    deliver(mail_server)
    now = utcnow()
    record([event(api_key, now - timedelta(seconds=1)) for _ in range(7_999)])
    record([event(api_key, now - timedelta(seconds=1), "rate_limited") for _ in range(5)])
    assert run_once(now=now) == fired(ratelimit_exceeded=1)  # refusals are not successful calls
    deliver(mail_server)

    record([event(api_key, now - timedelta(seconds=1))])
    assert run_once(now=now)["quota.threshold"] == 1
    [eighty] = _events(org, "quota.threshold")
    assert eighty.dedupe_key == f"quota.threshold:{now:%Y-%m}:80"
    assert eighty.payload["data"] == {
        "percent": 80,
        "used": 8_000,
        "quota": 10_000,
        "month": f"{now:%Y-%m}",
        "hard": True,
    }
    sent = deliver(mail_server)
    assert [r.rcpt_tos[0] for r in sent] == [owner.email]  # owners only by default
    assert admin.email not in [r.rcpt_tos[0] for r in sent]
    assert sent[0].message["Subject"] == f"[{org.name}] Quota threshold reached"
    assert "80% of the monthly quota is used: 8,000 of 10,000 calls" in sent[0].part("plain")
    assert run_once(now=now)["quota.threshold"] == 0

    record([event(api_key, now - timedelta(seconds=1)) for _ in range(2_000)])
    assert run_once(now=now)["quota.threshold"] == 1
    assert sorted(
        (e.payload["data"]["percent"], e.payload["data"]["used"]) for e in _events(org, "quota.threshold")
    ) == [
        (80, 8_000),
        (100, 10_000),
    ]
    assert "Further calls are refused until the month ends." in deliver(mail_server)[0].part("plain")
    assert run_once(now=now)["quota.threshold"] == 0


def test_an_organization_that_jumps_past_100_percent_hears_about_100_only(org, owner):
    now = utcnow()
    _folded(org, now, ok=12_000)
    assert run_once(now=now)["quota.threshold"] == 1
    assert run_once(now=now)["quota.threshold"] == 0
    assert [e.payload["data"]["percent"] for e in _events(org, "quota.threshold")] == [100]


def test_the_quota_includes_this_months_extension_and_the_plan_says_whether_calls_stop(owner):
    now = utcnow()
    month = now.date().replace(day=1)
    extended = factories.org()
    extended.quota_extension, extended.quota_extension_month = 2_500, month  # 12,500 this month
    pro = factories.org(plan="pro")  # 1,000,000, overage allowed
    db.session.commit()
    _folded(extended, now, ok=9_000)  # 90% of the plan alone, 72% with the extension
    _folded(pro, now, ok=800_000)
    assert run_once(now=now)["quota.threshold"] == 1
    assert _events(extended, "quota.threshold") == []
    [event_] = _events(pro, "quota.threshold")
    assert event_.payload["data"] == {
        "percent": 80,
        "used": 800_000,
        "quota": 1_000_000,
        "month": f"{now:%Y-%m}",
        "hard": False,
    }
    _folded(extended, now, ok=1_000)
    assert run_once(now=now)["quota.threshold"] == 1
    assert _events(extended, "quota.threshold")[0].payload["data"]["quota"] == 12_500


def test_an_enterprise_quota_is_compared_past_an_integers_range(owner):
    """100,000,000 calls times a threshold percentage does not fit in 32 bits: the pass must still run."""
    now = utcnow()
    enterprise = factories.org(plan="enterprise")
    db.session.commit()
    _folded(enterprise, now, ok=50_000_000)  # under 80 %: nothing to say, and no error either
    assert run_once(now=now)["quota.threshold"] == 0
    _folded(enterprise, now, ok=30_000_000)
    assert run_once(now=now)["quota.threshold"] == 1
    [event_] = _events(enterprise, "quota.threshold")
    assert (event_.payload["data"]["percent"], event_.payload["data"]["used"]) == (80, 80_000_000)


def test_last_months_calls_do_not_count_toward_this_months_quota(org, owner):
    now = utcnow()
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    _folded(org, month_start - timedelta(hours=1), ok=9_000)
    _folded(org, now, ok=100)
    assert run_once(now=now)["quota.threshold"] == 0


# Rate-limit refusals ----------------------------------------------------------------------------------------


def test_the_first_rate_limit_refusal_of_an_hour_is_announced_once(org, owner, mail_server):
    admin = factories.member(org, "admin")
    api_key = factories.api_key(org, owner).api_key
    deliver(mail_server)
    now = utcnow()
    hour = _hour(now)
    record([event(api_key, hour + timedelta(seconds=1), "rate_limited") for _ in range(3)] + [event(api_key, now)])

    assert run_once(now=now) == fired(ratelimit_exceeded=1)
    [refused] = _events(org, "ratelimit.exceeded")
    assert refused.payload["data"] == {"hour": hour.isoformat(), "refused": 3}
    sent = deliver(mail_server)
    assert sorted(r.rcpt_tos[0] for r in sent) == sorted([owner.email, admin.email])
    assert f"refused for the rate limit in the hour from {hour.isoformat()}" in sent[0].part("plain")

    record([event(api_key, hour + timedelta(seconds=2), "rate_limited")])
    assert run_once(now=now) == NOTHING  # the same hour

    next_hour = hour + timedelta(hours=1)
    record([event(api_key, next_hour + timedelta(seconds=1), "rate_limited")])
    assert run_once(now=next_hour + timedelta(minutes=1)) == fired(ratelimit_exceeded=1)
    assert _events(org, "ratelimit.exceeded")[-1].payload["data"] == {"hour": next_hour.isoformat(), "refused": 1}


def test_a_late_pass_still_announces_the_last_two_hours_not_older(org, owner):
    now = utcnow()
    _folded(org, now - timedelta(hours=1), rate_limited=2)
    _folded(org, now - timedelta(hours=4), rate_limited=2)
    assert run_once(now=now) == fired(ratelimit_exceeded=1)
    [refused] = _events(org, "ratelimit.exceeded")
    assert refused.payload["data"]["hour"] == _hour(now - timedelta(hours=1)).isoformat()


# All of them ------------------------------------------------------------------------------------------------


def _due_everything(org, owner, t0):
    """An organization with one of each scheduled event due at ``t0 + 31 days``."""
    org.idle_key_days = 30
    db.session.commit()
    now = t0 + timedelta(days=31)
    factories.api_key(org, owner, name="expiring", expires_at=t0 + timedelta(days=35))  # also idle
    factories.api_key(org, owner, name="expired", expires_at=t0 + timedelta(days=30))
    _folded(org, now, ok=10_000, rate_limited=1)
    return now


def test_a_second_pass_fires_nothing_new(org, owner):
    now = _due_everything(org, owner, utcnow())
    assert run_once(now=now) == fired(
        key_expiring=1, key_expired=1, key_idle=1, quota_threshold=1, ratelimit_exceeded=1
    )
    assert run_once(now=now) == NOTHING
    assert run_once(now=now + timedelta(minutes=1)) == NOTHING


def test_a_deleted_organization_gets_nothing(org, owner):
    now = _due_everything(org, owner, utcnow())
    org.deleted_at = utcnow()
    db.session.commit()
    assert run_once(now=now) == NOTHING
    assert [e.type for e in db.session.scalars(sa.select(NotificationEvent))] == ["key.created", "key.created"]


def test_scheduled_events_are_queued_for_subscribed_webhooks(org, owner):
    endpoint = WebhookEndpoint(
        organization_id=org.id,
        url="https://hooks.example.com/procode",
        events=["key.expiring", "quota.threshold"],
        secret_sealed=endpoints.seal_secret(endpoints.new_secret()),
    )
    db.session.add(endpoint)
    db.session.commit()
    now = _due_everything(org, owner, utcnow())
    run_once(now=now)
    deliveries = db.session.scalars(sa.select(WebhookDelivery).filter_by(endpoint_id=endpoint.id)).all()
    assert sorted(d.event.type for d in deliveries) == ["key.expiring", "quota.threshold"]
    assert all(d.status == "pending" for d in deliveries)


def test_flask_notify_run_prints_what_fired_and_is_quiet_otherwise(app, org, owner):
    factories.api_key(org, owner, name="soon", expires_at=utcnow() + timedelta(days=2))
    runner = app.test_cli_runner()

    first = runner.invoke(args=["notify", "run"])
    assert first.exit_code == 0, first.output
    assert first.output == "key.expiring: 1\n"
    again = runner.invoke(args=["notify", "run"])
    assert again.exit_code == 0 and again.output == ""
    verbose = runner.invoke(args=["notify", "run", "-v"])
    assert verbose.exit_code == 0 and verbose.output == "nothing due\n"
    assert len(_events(org, "key.expiring")) == 1
    mailed = db.session.scalars(sa.select(OutboxMail.to_address).where(OutboxMail.subject.contains("expiring")))
    assert list(mailed) == [owner.email]


# Several passes at once, on committed data ------------------------------------------------------------------


@pytest.fixture
def committed(app):
    """A committed organization (an owner, an admin) with one of each scheduled event due at the ``now`` given;
    deleted afterwards with its members and their mail."""
    org = factories.org()
    owner, admin = factories.member(org, "owner"), factories.member(org, "admin")
    now = _due_everything(org, owner, utcnow())
    org_id, user_ids, emails = org.id, [owner.id, admin.id], [owner.email, admin.email]
    db.session.remove()
    yield org_id, now, emails
    db.session.remove()
    db.session.execute(sa.delete(OutboxMail).where(OutboxMail.to_address.in_(emails)))
    db.session.execute(sa.delete(Organization).where(Organization.id == org_id))
    db.session.execute(sa.delete(User).where(User.id.in_(user_ids)))
    db.session.commit()


def _together(app, count, work):
    """Run ``work()`` in ``count`` threads, each with its own app context, session and connection, released
    at the same moment; returns their results (an exception is re-raised)."""
    barrier = threading.Barrier(count)
    results, errors = [], []

    def run():
        with app.app_context():
            try:
                barrier.wait()
                results.append(work())
            except Exception as exc:  # noqa: BLE001 -- re-raised in the test's thread
                errors.append(exc)
            finally:
                db.session.remove()

    threads = [threading.Thread(target=run) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    if errors:
        raise errors[0]
    return results


@pytest.mark.concurrency
@pytest.mark.parametrize("exclusive", [True, False], ids=["advisory-lock", "dedupe-key-only"])
def test_passes_running_at_the_same_moment_fire_each_event_once(app, committed, exclusive, monkeypatch):
    org_id, now, emails = committed
    if not exclusive:  # every pass has found the same events due before any of them records one
        emit_all, found = scheduler._emit_all, threading.Barrier(4)

        def racing(*args):
            found.wait(60)
            emit_all(*args)

        monkeypatch.setattr(scheduler, "_emit_all", racing)
    _together(app, 4, lambda: run_once(now=now, exclusive=exclusive))
    monkeypatch.undo()

    rows = db.session.execute(
        sa.select(NotificationEvent.type, NotificationEvent.dedupe_key).where(
            NotificationEvent.organization_id == org_id, NotificationEvent.type.in_(SCHEDULED_EVENTS)
        )
    ).all()
    assert Counter(kind for kind, _ in rows) == {
        "key.expiring": 1,
        "key.expired": 1,
        "key.idle": 1,
        "quota.threshold": 1,
        "ratelimit.exceeded": 1,
    }
    # Each event mailed once to each recipient: owners and admins, or owners only for the quota.
    mails = Counter(
        db.session.execute(
            sa.select(OutboxMail.to_address, OutboxMail.subject).where(OutboxMail.to_address.in_(emails))
        ).all()
    )
    assert set(mails.values()) == {1} and len(mails) == 9
    assert run_once(now=now) == NOTHING


@pytest.mark.concurrency
def test_one_process_of_many_gets_each_intervals_turn(app):
    def clear():
        db.session.execute(sa.text("DELETE FROM rate_limit_tracking WHERE bucket = :b"), {"b": TURN_BUCKET})
        db.session.commit()

    clear()
    try:
        turns = _together(app, 4, lambda: claim_turn(3600))
        assert sorted(turns) == [False, False, False, True]
        assert claim_turn(3600) is False
    finally:
        clear()


@pytest.fixture
def expiring_soon(app):
    """A committed organization with a key that expires in three days; deleted afterwards."""
    org = factories.org()
    owner = factories.member(org, "owner")
    factories.api_key(org, owner, expires_at=utcnow() + timedelta(days=3))
    org_id, owner_id, email = org.id, owner.id, owner.email
    db.session.remove()
    yield org_id
    db.session.remove()
    db.session.execute(sa.delete(OutboxMail).where(OutboxMail.to_address == email))
    db.session.execute(sa.delete(Organization).where(Organization.id == org_id))
    db.session.execute(sa.delete(User).where(User.id == owner_id))
    db.session.execute(sa.text("DELETE FROM rate_limit_tracking WHERE bucket = :b"), {"b": TURN_BUCKET})
    db.session.commit()


@pytest.mark.concurrency
def test_the_scheduler_thread_starts_at_a_process_first_request_and_runs_passes(database_url, expiring_soon):
    web = create_app(
        {"SQLALCHEMY_DATABASE_URI": database_url, "NOTIFY_SCHEDULER_THREAD": True, "NOTIFY_INTERVAL": 1},
        env="testing",
    )
    thread = web.extensions[SCHEDULER_EXTENSION]
    assert thread._thread is None  # nothing at import or app creation
    try:
        assert web.test_client().get("/login").status_code == 200
        assert thread._thread is not None and thread._thread.is_alive()
        assert thread._thread.name == "notify-scheduler"
        with web.app_context():
            query = sa.select(NotificationEvent.type).where(NotificationEvent.organization_id == expiring_soon)
            deadline = time.monotonic() + 30
            while not (kinds := db.session.scalars(query).all()) or "key.expiring" not in kinds:
                assert time.monotonic() < deadline, kinds
                db.session.rollback()
                time.sleep(0.1)
            assert sorted(kinds) == ["key.created", "key.expiring"]
    finally:
        thread.stop()
        with web.app_context():
            db.session.remove()
            db.engine.dispose()
    assert not thread._thread.is_alive()


def test_the_scheduler_thread_is_off_in_tests_and_where_configured_off(app, database_url):
    assert SCHEDULER_EXTENSION not in app.extensions
    web = create_app({"SQLALCHEMY_DATABASE_URI": database_url, "NOTIFY_SCHEDULER_THREAD": False}, env="testing")
    assert SCHEDULER_EXTENSION not in web.extensions
