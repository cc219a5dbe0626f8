"""The rollups the charts read always equal the raw events, however and whenever the events arrive."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import pytest
import sqlalchemy as sa

from portal.extensions import db
from portal.usage import maintenance
from tests import factories
from tests.usage_helpers import event, record, rollup

T0 = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)


@pytest.fixture
def keys(org, owner):
    return (
        factories.api_key(org, owner, environment="test").api_key,
        factories.api_key(org, owner, environment="live", name="Live").api_key,
    )


def test_every_outcome_and_environment_is_counted_like_the_raw_events(org, keys):
    test_key, live_key = keys
    record(
        [
            event(test_key, T0, "ok"),
            event(test_key, T0 + timedelta(minutes=5), "rate_limited"),
            event(live_key, T0, "revoked", endpoint="/v1/embed"),
            event(live_key, T0, "expired", endpoint=None),
            event(None, T0, "unknown", org_id=org.id),
            event(None, T0, "malformed"),
        ]
    )
    record([event(live_key, T0 + timedelta(minutes=59), "ok")])  # a second statement, same buckets

    assert maintenance.rollup_mismatches(org.id) == {}
    by_env = {r.environment: r for r in rollup("usage_org_hourly", "organization_id = :o", o=org.id)}
    assert (by_env["test"].calls, by_env["test"].ok, by_env["test"].rate_limited) == (2, 1, 1)
    assert (by_env["live"].calls, by_env["live"].revoked, by_env["live"].expired) == (3, 1, 1)
    assert (by_env["none"].calls, by_env["none"].unknown) == (1, 1)  # no key, but the org is known
    endpoints = {r.endpoint: r.calls for r in rollup("usage_endpoint_hourly", "organization_id = :o", o=org.id)}
    assert endpoints == {"/v1/translate": 4, "/v1/embed": 1, "": 1}


def test_hour_and_day_edges(org, keys):
    key = keys[0]
    last_of_day = datetime(2026, 11, 20, 23, 59, 59, 999999, tzinfo=UTC)
    record(
        [
            event(key, last_of_day),
            event(key, last_of_day + timedelta(microseconds=1)),
            event(key, T0 - timedelta(microseconds=1)),
            event(key, T0),
        ]
    )

    hours = {r.bucket: r.calls for r in rollup("usage_key_hourly", "key_id = :k", k=key.id)}
    assert hours == {
        T0 - timedelta(hours=1): 1,
        T0: 1,
        datetime(2026, 11, 20, 23, tzinfo=UTC): 1,
        datetime(2026, 11, 21, tzinfo=UTC): 1,
    }
    days = {r.day: r.calls for r in rollup("usage_key_daily", "key_id = :k", k=key.id)}
    assert days == {date(2026, 11, 20): 3, date(2026, 11, 21): 1}
    assert maintenance.rollup_mismatches(org.id) == {}


def test_a_late_arrival_lands_in_its_old_bucket(org, keys):
    key = keys[0]
    record([event(key, T0)])
    record([event(key, T0 - timedelta(days=12, minutes=30), "rate_limited")])  # arrives late, with its old time

    old = rollup("usage_key_daily", "key_id = :k AND day = :d", k=key.id, d=date(2026, 11, 8))
    assert [(r.calls, r.rate_limited) for r in old] == [(1, 1)]
    assert maintenance.rollup_mismatches(org.id) == {}


def test_rebuild_gives_the_same_rollups_as_the_trigger(org, keys):
    test_key, live_key = keys
    record(
        [event(test_key, T0 + timedelta(minutes=i), "ok" if i % 4 else "rate_limited") for i in range(90)]
        + [event(live_key, T0 - timedelta(days=2), "revoked")]
    )
    before = rollup("usage_key_daily", "organization_id = :o ORDER BY key_id, day", o=org.id)

    maintenance.rebuild_rollups(org.id, since=T0 - timedelta(days=5))

    assert rollup("usage_key_daily", "organization_id = :o ORDER BY key_id, day", o=org.id) == before
    assert maintenance.rollup_mismatches(org.id) == {}


def test_parse_age():
    assert maintenance.parse_age("90d") == timedelta(days=90)
    assert maintenance.parse_age("36h") == timedelta(hours=36)
    with pytest.raises(ValueError, match="expected an age"):
        maintenance.parse_age("ninety days")


@pytest.fixture
def committed_org(app) -> Iterator[tuple[uuid.UUID, list[uuid.UUID]]]:
    """An organization with two keys, committed for real; removed with everything it recorded afterwards."""
    org = factories.org()
    owner = factories.user()
    key_ids = [factories.api_key(org, owner, environment=env).api_key.id for env in ("test", "live")]
    org_id, user_id = org.id, owner.id
    db.session.remove()
    yield org_id, key_ids
    db.session.remove()
    with db.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM api_key_usage WHERE organization_id = :o"), {"o": org_id})
        conn.execute(sa.text("DELETE FROM usage_rollup_pending WHERE organization_id = :o"), {"o": org_id})
        conn.execute(sa.text("DELETE FROM audit_events WHERE organization_id = :o"), {"o": org_id})
        conn.execute(sa.text("DELETE FROM organizations WHERE id = :o"), {"o": org_id})  # cascades to rollups
        conn.execute(sa.text("DELETE FROM users WHERE id = :u"), {"u": user_id})


@pytest.mark.concurrency
def test_concurrent_writers_and_a_folder_lose_nothing(committed_org):
    org_id, key_ids = committed_org
    errors: list[BaseException] = []
    engine = db.engine

    class Key:  # what event() needs from an ApiKey
        def __init__(self, key_id: uuid.UUID) -> None:
            self.id, self.organization_id = key_id, org_id

    def writer(seed: int) -> None:
        try:
            with engine.connect() as conn:
                for batch in range(40):
                    events = [
                        event(
                            Key(key_ids[(seed + i) % 2]),
                            T0 + timedelta(minutes=(batch * 7 + i) % 180),
                            "ok" if i % 5 else "rate_limited",
                        )
                        for i in range(25)
                    ]
                    record(events, connection=conn)
                    conn.commit()
        except BaseException as exc:  # noqa: BLE001 -- reported by the main thread
            errors.append(exc)

    writing = threading.Event()

    def folder() -> None:  # a page view folding pending sums while the writers write
        try:
            with engine.connect() as conn:
                while writing.is_set():
                    conn.execute(sa.text("SELECT usage_rollup_fold()"))
                    conn.commit()
        except BaseException as exc:  # noqa: BLE001 -- reported by the main thread
            errors.append(exc)

    writing.set()
    threads = [threading.Thread(target=writer, args=(seed,)) for seed in (0, 1)]
    folding = threading.Thread(target=folder)
    for thread in [*threads, folding]:
        thread.start()
    for thread in threads:
        thread.join()
    writing.clear()
    folding.join()

    assert errors == []
    assert maintenance.rollup_mismatches(org_id) == {}
    total = db.session.scalar(
        sa.text("SELECT sum(calls) FROM usage_org_hourly WHERE organization_id = :o"), {"o": org_id}
    )
    assert total == 2 * 40 * 25


@pytest.fixture
def orgs_in_two_lanes(app) -> Iterator[list[tuple[uuid.UUID, uuid.UUID, int]]]:
    """Two committed organizations in different fold lanes, a key each: (organization, key, lane); removed with
    everything they recorded afterwards."""
    owner = factories.user()
    made: dict[int, tuple[uuid.UUID, uuid.UUID, int]] = {}
    extra: list[uuid.UUID] = []
    while len(made) < 2:
        org = factories.org()
        lane = db.session.scalar(sa.text("SELECT usage_fold_lane(:o)"), {"o": org.id})
        if lane in made:
            extra.append(org.id)
            continue
        made[lane] = (org.id, factories.api_key(org, owner).api_key.id, lane)
    user_id = owner.id
    db.session.commit()
    db.session.remove()
    yield list(made.values())
    db.session.remove()
    with db.engine.begin() as conn:
        for org_id in [o for o, _, _ in made.values()] + extra:
            for table in ("api_key_usage", "usage_rollup_pending", "usage_client_pending", "audit_events"):
                conn.execute(sa.text(f"DELETE FROM {table} WHERE organization_id = :o"), {"o": org_id})  # noqa: S608
            conn.execute(sa.text("DELETE FROM organizations WHERE id = :o"), {"o": org_id})  # cascades to rollups
        conn.execute(sa.text("DELETE FROM users WHERE id = :u"), {"u": user_id})


@pytest.mark.concurrency
def test_folders_of_different_lanes_fold_side_by_side(orgs_in_two_lanes):
    """A folder holding one organization's lane (a writer's transaction still open) keeps no other lane from being
    folded, nor a second folder of its own lane waiting: that one skips it at once; the whole fold waits for it."""
    (first_org, first_key, first_lane), (second_org, second_key, second_lane) = orgs_in_two_lanes
    engine = db.engine

    class Key:  # what event() needs from an ApiKey
        def __init__(self, key_id: uuid.UUID, org_id: uuid.UUID) -> None:
            self.id, self.organization_id = key_id, org_id

    def pending(org_id: uuid.UUID) -> int:
        with engine.connect() as conn:
            return int(
                conn.scalar(
                    sa.text("SELECT count(*) FROM usage_rollup_pending WHERE organization_id = :o"), {"o": org_id}
                )
            )

    lane_lock = sa.text("SELECT pg_advisory_lock(7201004, :l)")  # the insert trigger's occasional fold skips them
    with engine.connect() as keeper, engine.connect() as conn:
        for lane in (first_lane, second_lane):
            keeper.execute(lane_lock, {"l": lane})
        record([event(Key(first_key, first_org), T0 + timedelta(minutes=i)) for i in range(3)], connection=conn)
        record([event(Key(second_key, second_org), T0, "rate_limited")], connection=conn)
        record([event(Key(second_key, second_org), T0, endpoint="/v1/embed")], connection=conn)
        conn.commit()
        keeper.execute(sa.text("SELECT pg_advisory_unlock_all()"))
    assert pending(first_org) == 1 and pending(second_org) == 2  # a statement's sums per key, hour and endpoint

    fold_lanes = sa.text("SELECT usage_rollup_fold_lanes(CAST(:l AS int[]))")
    with engine.connect() as holder, engine.connect() as other:
        assert holder.scalar(fold_lanes, {"l": [first_lane]}) == 1
        # first_lane is held until holder commits: another folder skips it at once and folds the other lane
        assert other.scalar(fold_lanes, {"l": [first_lane]}) == 0
        assert other.scalar(fold_lanes, {"l": [first_lane, second_lane]}) == 2
        other.commit()
        assert pending(second_org) == 0 and pending(first_org) == 1  # the holder's fold is not committed yet

        whole: list[int] = []
        folding = threading.Thread(
            target=lambda: whole.append(maintenance_fold_on(engine)), name="whole-fold", daemon=True
        )
        folding.start()
        folding.join(timeout=0.5)
        assert folding.is_alive(), "the whole fold must wait for the lane another folder holds"
        holder.commit()
        folding.join(timeout=10)
        assert not folding.is_alive() and whole == [0]

    assert pending(first_org) == 0
    assert maintenance.rollup_mismatches(first_org) == {} and maintenance.rollup_mismatches(second_org) == {}
    calls = db.session.scalar(
        sa.text("SELECT sum(calls) FROM usage_key_hourly WHERE key_id IN (:a, :b)"), {"a": first_key, "b": second_key}
    )
    assert calls == 5


def maintenance_fold_on(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        folded = int(conn.scalar(sa.text("SELECT usage_rollup_fold()")) or 0)
        conn.commit()
        return folded


def test_fold_lanes_are_the_ones_the_app_counts(app):
    """The app's lane count (simulate's shares) is the database's: every lane folds, one past the last is refused."""
    every = list(range(maintenance.FOLD_LANES))
    assert maintenance.lanes_of(0, 1) == every
    assert sorted(maintenance.lanes_of(0, 3) + maintenance.lanes_of(1, 3) + maintenance.lanes_of(2, 3)) == every
    assert maintenance.lanes_of(0, 2) == [0, 2, 4, 6] and maintenance.lanes_of(17, 30) == maintenance.lanes_of(1, 30)
    db.session.execute(  # pending sums of 64 organizations all over the lanes (unknown ones: dropped when folded)
        sa.text(
            "INSERT INTO usage_rollup_pending (organization_id, environment, bucket, endpoint)"
            " SELECT gen_random_uuid(), 'none', now(), '' FROM generate_series(1, 64)"
        )
    )
    count = "SELECT count(*) FROM usage_rollup_pending"
    in_lane = db.session.scalar(sa.text(f"{count} WHERE usage_fold_lane(organization_id) = 3"))
    fold_lanes = sa.text("SELECT usage_rollup_fold_lanes(CAST(:l AS int[]))")
    assert db.session.scalar(fold_lanes, {"l": [3]}) == in_lane  # one lane: its rows only
    rest = db.session.scalar(sa.text(count))
    assert rest >= 64 - in_lane
    assert db.session.scalar(fold_lanes, {"l": every}) == rest  # every lane together: every pending row
    assert db.session.scalar(sa.text(count)) == 0
    with pytest.raises(sa.exc.DBAPIError, match="fold lane"):
        db.session.execute(sa.text("SELECT usage_rollup_fold_lanes(ARRAY[:l])"), {"l": maintenance.FOLD_LANES})
    db.session.rollback()
    lanes = db.session.scalars(
        sa.text("SELECT DISTINCT usage_fold_lane(gen_random_uuid()) FROM generate_series(1, 500)")
    )
    assert set(lanes) == set(range(maintenance.FOLD_LANES))


def test_top_keys_mix_daily_and_hourly_rollups_without_losing_the_edges(org, keys):
    from portal.usage import services
    from portal.usage.ranges import parse_range

    test_key, live_key = keys
    now = datetime(2026, 11, 24, 9, 41, tzinfo=UTC)
    r = parse_range({"range": "7d", "bucket": "hour"}, tz_cookie=None, now=now, max_days=400)
    moments = [
        r.start - timedelta(microseconds=1),
        r.start,
        r.start + timedelta(hours=14, minutes=59),
        datetime(2026, 11, 20, 12, tzinfo=UTC),
        r.end - timedelta(microseconds=1),
        r.end,
    ]
    record([event(test_key, at) for at in moments] + [event(live_key, at, "rate_limited") for at in moments[1:3]])
    maintenance.fold()

    ranked = {row.id: (row.calls, row.rate_limited) for row in services.top_keys(org.id, r)}
    assert ranked == {test_key.id: (4, 0), live_key.id: (2, 2)}
    assert services.summary(services.org_series(org.id, r))["calls"] == 6


@pytest.mark.parametrize("shape", ["skewed", "flat", "busy_outside_the_range"])
def test_top_keys_shortcut_is_exact(monkeypatch, shape):
    from portal.usage import services, topkeys
    from portal.usage.ranges import parse_range

    monkeypatch.setattr(topkeys, "CANDIDATES", 4)
    org = factories.org(plan="enterprise")
    owner = factories.member(org, "owner")
    now = datetime(2026, 11, 24, 9, 41, tzinfo=UTC)
    r = parse_range({"range": "7d", "bucket": "hour"}, tz_cookie=None, now=now, max_days=400)
    keys = [factories.api_key(org, owner, name=f"k{i}").api_key for i in range(9)]
    events = []
    for i, key in enumerate(keys):
        inside = {"skewed": 2**i, "flat": 5 + i % 2, "busy_outside_the_range": 3 + i}[shape]
        events += [event(key, r.start + timedelta(minutes=7 * n)) for n in range(inside)]
        if shape == "busy_outside_the_range" and i < 4:  # same UTC day, but before the range starts
            events += [event(key, r.start - timedelta(minutes=1 + n)) for n in range(40)]
    record(events)
    maintenance.fold()

    expected = db.session.execute(
        sa.text(
            "SELECT key_id, count(*) FROM api_key_usage WHERE organization_id = :o AND occurred_at >= :s"
            " AND occurred_at < :e GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 3"
        ),
        {"o": org.id, "s": r.start, "e": r.end},
    )
    ranked = services.top_keys(org.id, r, limit=3)
    assert [(row.id, row.calls) for row in ranked] == [tuple(x) for x in expected]


def test_fold_keeps_one_row_per_key_whatever_pending_rows_say(org, keys):
    maintenance.fold()  # the queue is shared: start it empty of sums the concurrency tests committed
    key = keys[1]
    pending = sa.text(
        "INSERT INTO usage_rollup_pending (organization_id, key_id, environment, bucket, endpoint, calls, ok)"
        " VALUES (:o, :k, :env, :b, '/v1/x', 1, 1)"
    )
    for env in ("live", "none"):  # never written by the trigger, but a fold must not trip over it
        db.session.execute(pending, {"o": org.id, "k": key.id, "env": env, "b": T0})
    assert maintenance.fold() == 2
    assert [r.calls for r in rollup("usage_key_hourly", "key_id = :k", k=key.id)] == [2]


def test_sums_of_a_deleted_organization_are_dropped_not_folded(org, keys):
    maintenance.fold()  # the queue is shared: start it empty of sums the concurrency tests committed
    other = factories.org()
    record([event(keys[0], T0), event(None, T0, "unknown", org_id=other.id)])
    db.session.delete(other)
    db.session.flush()
    assert maintenance.fold() == 2  # both pending rows leave the queue; the orphan is not folded
    assert [r.calls for r in rollup("usage_org_hourly", "organization_id = :o", o=org.id)] == [1]
