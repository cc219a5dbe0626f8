"""fold lanes: pending usage sums are folded into the rollups by organization lane, several folders at once

Until now one advisory lock let one folder at a time move pending sums into the rollups (usage_rollup_fold, 0003
and 0011; usage_clients_fold, 0012). The fold is the largest part of metering a call (about 9 µs of
PostgreSQL's CPU per event for the five rollups at 10,000 keys, docs/performance.md), so that lock capped ingest
at about 100,000 events/s however many cores the database had. Organizations now fall into FOLD_LANES lanes
(usage_fold_lane: the last byte of the id); every rollup row belongs to one organization, so folders of
different lanes never touch the same row and need not wait for each other.

- usage_rollup_fold() and usage_clients_fold() fold everything as before: they take every lane's lock in order
  and wait for it, so a page that folds before it reads sees every sum committed before it.
- usage_rollup_fold_lanes(lanes) and usage_clients_fold_lanes(lanes) fold the lanes given that no other folder
  holds, in one pass, and never wait: the insert triggers fold a random lane now and then, and each of `flask
  usage simulate`'s connections folds its own share of the lanes, side by side with the others.
- usage_rollup_fold_held(lanes) and usage_clients_fold_held(lanes) are the folds themselves, 0011's and 0012's
  bodies with the pending rows limited to the lanes given; their callers hold those lanes' locks.

The lane locks are two-key advisory locks (0003's and 0012's lock ids, lane), apart from the one-key locks the
previous functions took; like those, a lane's lock is held until its folder's transaction ends. So a transaction
that inserts usage rows (its trigger may fold a lane) must not run the whole fold before it commits: two such
transactions could each hold a lane the other waits for. The portal never does: the usage writers commit their
inserts, and pages, the scheduler and the commands fold in transactions of their own.
The downgrade restores 0011's and 0012's functions.

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-03 08:00:00.000000
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None

FOLD_LANES = 8
FOLD_LOCK, CLIENTS_FOLD_LOCK = 7_201_004, 7_201_006  # as in 0003 and 0012
TRIGGER_FOLD_CHANCE = 0.01 * FOLD_LANES  # one lane as often as the whole fold was folded before

LANE_FUNCTION = f"""
CREATE FUNCTION usage_fold_lane(org uuid) RETURNS int LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
    SELECT get_byte(uuid_send(org), 15) % {FOLD_LANES}
$fn$
"""


def _sibling(stem: str) -> ModuleType:
    """An earlier migration's module, for its function texts (its file name is not an importable name)."""
    spec = importlib.util.spec_from_file_location(f"migration_{stem}", Path(__file__).with_name(f"{stem}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _replaced(text: str, *changes: tuple[str, str]) -> str:
    """``text`` with each change made exactly once: an earlier function body that does not read as expected fails
    the migration instead of producing a different function."""
    for old, new in changes:
        if text.count(old) != 1:
            raise RuntimeError(f"expected {old!r} once in an earlier migration's function")
        text = text.replace(old, new)
    return text


def _entry_points(kind: str, lock: int) -> str:
    """The whole fold (every lane's lock, waiting for it) and the fold of the free lanes among those given."""
    return f"""
CREATE OR REPLACE FUNCTION usage_{kind}_fold() RETURNS bigint LANGUAGE plpgsql AS $fn$
BEGIN
    FOR lane IN 0..{FOLD_LANES - 1} LOOP
        PERFORM pg_advisory_xact_lock({lock}, lane);
    END LOOP;
    RETURN usage_{kind}_fold_held(NULL);
END
$fn$;
CREATE FUNCTION usage_{kind}_fold_lanes(lanes int[]) RETURNS bigint LANGUAGE plpgsql AS $fn$
DECLARE
    free int[] := '{{}}';
    lane int;
BEGIN
    FOREACH lane IN ARRAY lanes LOOP
        IF lane NOT BETWEEN 0 AND {FOLD_LANES - 1} THEN
            RAISE EXCEPTION 'fold lane % is not between 0 and {FOLD_LANES - 1}', lane;
        END IF;
        IF pg_try_advisory_xact_lock({lock}, lane) THEN
            free := free || lane;
        END IF;
    END LOOP;
    IF cardinality(free) = 0 THEN
        RETURN 0;
    END IF;
    RETURN usage_{kind}_fold_held(free);
END
$fn$;
"""


def _trigger_fold(kind: str, lock: int) -> tuple[str, str]:
    """The insert trigger's occasional fold: one random lane instead of the whole fold under one lock."""
    return (
        f"IF random() < 0.01 AND pg_try_advisory_xact_lock({lock}) THEN",
        f"IF random() < {TRIGGER_FOLD_CHANCE} THEN",
    ), (
        f"PERFORM usage_{kind}_fold();",
        f"PERFORM usage_{kind}_fold_lanes(ARRAY[floor(random() * {FOLD_LANES})::int]);",
    )


IN_LANES = "lanes IS NULL OR usage_fold_lane(organization_id) = ANY(lanes)"


def upgrade():
    rollups, clients = _sibling("0011_key_policy"), _sibling("0012_key_forensics")
    trigger, fold = rollups._functions(rollups.NEW_OUTCOMES)
    op.execute(LANE_FUNCTION)
    op.execute(
        _replaced(
            fold,
            ("CREATE OR REPLACE FUNCTION usage_rollup_fold()", "CREATE FUNCTION usage_rollup_fold_held(lanes int[])"),
            (f"PERFORM pg_advisory_xact_lock({FOLD_LOCK});", ""),
            (
                "DELETE FROM usage_rollup_pending RETURNING *",
                f"DELETE FROM usage_rollup_pending WHERE {IN_LANES} RETURNING *",
            ),
        )
    )
    op.execute(
        _replaced(
            clients.FOLD_FUNCTION,
            ("CREATE FUNCTION usage_clients_fold()", "CREATE FUNCTION usage_clients_fold_held(lanes int[])"),
            (f"PERFORM pg_advisory_xact_lock({CLIENTS_FOLD_LOCK});", ""),
            (
                "DELETE FROM usage_client_pending RETURNING *",
                f"DELETE FROM usage_client_pending WHERE {IN_LANES} RETURNING *",
            ),
            (
                f"WHERE bucket < statement_timestamp() - {clients.HOURLY_KEPT};",
                f"WHERE bucket < statement_timestamp() - {clients.HOURLY_KEPT} AND ({IN_LANES});",
            ),
        )
    )
    op.execute(_entry_points("rollup", FOLD_LOCK))
    op.execute(_entry_points("clients", CLIENTS_FOLD_LOCK))
    op.execute(_replaced(trigger, *_trigger_fold("rollup", FOLD_LOCK)))
    op.execute(
        _replaced(
            clients.INGEST_FUNCTION,
            ("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION"),
            *_trigger_fold("clients", CLIENTS_FOLD_LOCK),
        )
    )


def downgrade():
    rollups, clients = _sibling("0011_key_policy"), _sibling("0012_key_forensics")
    trigger, fold = rollups._functions(rollups.NEW_OUTCOMES)
    op.execute(fold)
    op.execute(trigger)
    for text in (clients.FOLD_FUNCTION, clients.INGEST_FUNCTION):
        op.execute(_replaced(text, ("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION")))
    for kind in ("rollup", "clients"):
        op.execute(f"DROP FUNCTION usage_{kind}_fold_lanes(int[])")
        op.execute(f"DROP FUNCTION usage_{kind}_fold_held(int[])")
    op.execute("DROP FUNCTION usage_fold_lane(uuid)")
