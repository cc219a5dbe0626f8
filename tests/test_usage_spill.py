"""A clean stop during a database outage loses no usage row: the stopping workers spill what they hold to the
instance folder, and the next workers (or ``flask usage replay``) write it once the database answers, each row
exactly once: two replayers at once, a replay repeated after a crash, a commit whose answer was lost.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psycopg2
import pytest
import sqlalchemy as sa

from portal.extensions import db
from portal.verification import spill
from portal.verification.backend import libpq_dsn
from portal.verification.usage_writer import BufferedRecorder
from tests import factories, pgcluster
from tests.servers import ROOT, SECRETS, gunicorn

pytestmark = pytest.mark.concurrency

CALLS = 40  # answered calls buffered when the server is stopped
GARBAGE = 5  # calls with a malformed key, counted per address and minute


# --- Through a real gunicorn, against a private cluster that is stopped or frozen ---------------------------------


@pytest.fixture(scope="module")
def outage() -> Iterator[SimpleNamespace]:
    if not pgcluster.available():
        pytest.skip("needs PostgreSQL 15's server binaries (Debian's postgresql-15)")
    with pgcluster.private_cluster() as cluster:
        url, key = pgcluster.portal_database(cluster)
        yield SimpleNamespace(cluster=cluster, url=url, key=key)
        cluster.thaw()


def verify(base: str, key: str, **fields: str) -> int:
    body = json.dumps({"key": key, **fields}).encode()
    request = urllib.request.Request(  # noqa: S310 - our own loopback server
        base + "/v1/keys/verify", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def answer_calls(base: str, key: str, tag: str, address: str) -> int:
    """Answered calls of the key (each one usage row) and malformed ones from ``address``; how many answered."""
    answered = sum(verify(base, key, endpoint=tag) == 200 for _ in range(CALLS))
    assert [verify(base, "pk_test_nonsense", client_ip=address) for _ in range(GARBAGE)] == [401] * GARBAGE
    return answered


def stored(url: str, tag: str, address: str) -> tuple[int, int]:
    """Usage rows of ``tag`` and invalid-key calls counted for ``address``, as the database has them."""
    with psycopg2.connect(libpq_dsn(url)) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM api_key_usage WHERE endpoint = %s", (tag,))
        rows = cur.fetchone()[0]
        cur.execute("SELECT coalesce(sum(calls), 0) FROM api_invalid_key_counts WHERE client_ip = %s", (address,))
        calls = cur.fetchone()[0]
    conn.close()
    return int(rows), int(calls)


def spill_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.spill"))


def server_log(directory: Path) -> str:
    return "".join(path.read_text() for path in sorted(directory.glob("gunicorn-*.log")))


def replay_command(url: str, spill_dir: Path) -> subprocess.CompletedProcess[str]:
    settings = {**os.environ, **SECRETS, "DATABASE_URL": url, "PORTAL_ENV": "production"}
    settings["API_USAGE_SPILL_DIR"] = str(spill_dir)
    return subprocess.run(  # noqa: S603 - our own command, run with this interpreter
        [sys.executable, "-m", "flask", "--app", "wsgi", "usage", "replay"],
        cwd=ROOT,
        env=settings,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_stop_with_the_database_down_spills_and_the_replay_command_writes_each_row_once(outage, tmp_path):
    tag, address = f"/spill/{uuid.uuid4().hex}", "198.51.100.21"
    spill_dir = tmp_path / "usage-spill"  # where tests.servers points the server's spill folder
    with gunicorn(outage.url, tmp_path, API_USAGE_FLUSH_INTERVAL="3600") as base:  # nothing flushed before the stop
        answered = answer_calls(base, outage.key, tag, address)
        outage.cluster.stop()
        stopping = time.monotonic()
    stopped_in = time.monotonic() - stopping
    try:
        assert answered == CALLS
        assert stopped_in < 15, "the stop must stay well inside gunicorn's graceful timeout (30 s)"
        files, log = spill_files(spill_dir), server_log(tmp_path)
        assert files and "rows lost" not in log and "flask usage replay" in log
        assert all(outage.key not in path.read_text() for path in files) and outage.key not in log
    finally:
        outage.cluster.start()
    assert stored(outage.url, tag, address) == (0, 0)
    done = replay_command(outage.url, spill_dir)
    assert done.returncode == 0, done.stderr
    assert f"{CALLS:,} usage rows and {GARBAGE} invalid-key calls written" in done.stdout
    assert stored(outage.url, tag, address) == (CALLS, GARBAGE)
    assert spill_files(spill_dir) == []
    again = replay_command(outage.url, spill_dir)
    assert again.returncode == 0 and "No spill files" in again.stdout
    assert stored(outage.url, tag, address) == (CALLS, GARBAGE)


def test_a_stop_with_the_database_frozen_spills_and_the_next_workers_write_each_row_once(outage, tmp_path):
    """The database hangs (SIGSTOP) instead of refusing: the stopping workers give up their flush after a few
    seconds. The next server's two workers start together and both find the files: each row is written once."""
    tag, address = f"/spill/{uuid.uuid4().hex}", "198.51.100.22"
    spill_dir = tmp_path / "usage-spill"
    with gunicorn(outage.url, tmp_path, API_USAGE_FLUSH_INTERVAL="3600") as base:
        answered = answer_calls(base, outage.key, tag, address)
        outage.cluster.freeze()
        stopping = time.monotonic()
    stopped_in = time.monotonic() - stopping
    outage.cluster.thaw()
    assert answered == CALLS
    assert stopped_in < 15, "the stop must stay well inside gunicorn's graceful timeout (30 s)"
    assert spill_files(spill_dir) and "rows lost" not in server_log(tmp_path)
    with gunicorn(outage.url, tmp_path) as base:
        deadline = time.monotonic() + 60
        while (spill_files(spill_dir) or stored(outage.url, tag, address) != (CALLS, GARBAGE)) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.2)
        assert stored(outage.url, tag, address) == (CALLS, GARBAGE)
        assert verify(base, outage.key, endpoint=tag) == 200  # and the new workers answer as usual
    assert stored(outage.url, tag, address) == (CALLS + 1, GARBAGE)
    assert list(spill_dir.glob("*.rejected")) == []


# --- The spill files themselves, on the test database ----------------------------------------------------------


@pytest.fixture
def key(app: Any) -> Iterator[SimpleNamespace]:
    """A committed key, a tag for its rows and an address for its invalid-key counts; all removed afterwards."""
    org = factories.org(plan="pro")
    owner = factories.member(org, "owner")
    issued = factories.api_key(org, owner)
    started = datetime.now(UTC)
    data = SimpleNamespace(
        key_id=str(issued.api_key.id),
        org_id=str(org.id),
        tag=f"/spill/{uuid.uuid4().hex}",
        address=f"2001:db8::{uuid.uuid4().hex[:4]}",
        url=app.config["SQLALCHEMY_DATABASE_URI"],
    )
    org_id, user_id = org.id, owner.id
    yield data
    db.session.rollback()
    for statement in (
        "DELETE FROM api_key_usage WHERE organization_id = :o",
        "DELETE FROM usage_rollup_pending WHERE organization_id = :o",
        "DELETE FROM usage_client_pending WHERE organization_id = :o",
        "DELETE FROM audit_events WHERE organization_id = :o",
        "DELETE FROM notification_events WHERE organization_id = :o",
        "DELETE FROM organizations WHERE id = :o",
        "DELETE FROM api_invalid_key_counts WHERE client_ip = :ip",
        "DELETE FROM users WHERE id = :u",
        "DELETE FROM usage_spill_replays WHERE replayed_at >= :t",
    ):
        db.session.execute(sa.text(statement), {"o": org_id, "ip": data.address, "u": user_id, "t": started})
    db.session.commit()


def batch(key: SimpleNamespace, rows: int, invalid: int = 0, in_doubt: int | None = None) -> spill.Batch:
    now = datetime.now(UTC)
    usage = [(key.key_id, key.org_id, now, key.tag, 200, 1.5, "ok", None, 'agent "quoted" \\ ünï') for _ in range(rows)]
    counts = {(now.replace(second=0, microsecond=0), key.address, "malformed"): invalid} if invalid else {}
    return spill.Batch(usage, counts, in_doubt)


def counted(key: SimpleNamespace) -> tuple[int, int]:
    db.session.rollback()
    rows = db.session.scalar(sa.text("SELECT count(*) FROM api_key_usage WHERE endpoint = :t"), {"t": key.tag})
    calls = db.session.scalar(
        sa.text("SELECT coalesce(sum(calls), 0) FROM api_invalid_key_counts WHERE client_ip = :ip"), {"ip": key.address}
    )
    return int(rows or 0), int(calls or 0)


def test_two_replayers_at_once_write_each_file_once(key, tmp_path):
    files = 20
    for _ in range(files):
        spill.write(tmp_path, [batch(key, 5, invalid=2)])
    start = threading.Barrier(2)
    reports: list[spill.Replayed] = []

    def replayer() -> None:
        conn = psycopg2.connect(libpq_dsn(key.url))
        try:
            start.wait()
            reports.append(spill.replay(conn, tmp_path))
        finally:
            conn.close()

    threads = [threading.Thread(target=replayer) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(reports) == 2
    assert sum(report.files for report in reports) == files
    assert counted(key) == (files * 5, files * 2)
    assert spill.pending(tmp_path) == []


def test_a_file_left_behind_after_its_rows_were_written_is_only_removed(key, tmp_path):
    """A replayer that crashed between its commit and the file's removal leaves the file: the next one finds the
    file's id recorded with the rows and removes it without writing them again."""
    path = spill.write(tmp_path, [batch(key, 3, invalid=1)])
    kept = path.read_bytes()
    with psycopg2.connect(libpq_dsn(key.url)) as conn:
        assert spill.replay(conn, tmp_path).files == 1
        path.write_bytes(kept)  # as if the removal had never happened
        again = spill.replay(conn, tmp_path)
    conn.close()
    assert (again.files, again.already) == (0, 1)
    assert counted(key) == (3, 1)
    assert spill.pending(tmp_path) == []


class LostCommitAnswer:
    """A real connection whose COMMIT's answer never arrives, as when the server or the network goes away at that
    moment: the COMMIT reaches the server (``reaches=True``) or not, then the connection is gone."""

    def __init__(self, conn: Any, reaches: bool) -> None:
        self._conn, self._reaches, self._commits = conn, reaches, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def commit(self) -> None:
        self._commits += 1
        if self._commits == 1:  # the writer's session settings
            self._conn.commit()
            return
        if self._reaches:
            self._conn.commit()
        self._conn.close()
        raise psycopg2.OperationalError("server closed the connection unexpectedly")


class LosingRecorder(BufferedRecorder):
    def __init__(self, dsn: str, spill_dir: Path, reaches: bool) -> None:
        super().__init__(dsn, interval=3600, spill_dir=spill_dir)
        self.reaches = reaches

    def connect(self) -> Any:
        return LostCommitAnswer(super().connect(), self.reaches)


@pytest.mark.parametrize("reaches", [True, False], ids=["committed", "not-committed"])
def test_a_commit_whose_answer_was_lost_is_settled_exactly_once(key, tmp_path, app, reaches):
    """Only the database knows whether such a batch was written: it goes to a spill file with its transaction's
    id, and the replay writes it only if that transaction did not commit."""
    recorder = LosingRecorder(libpq_dsn(key.url), tmp_path, reaches)
    for row in batch(key, 7).rows:
        recorder.add(row)
    with pytest.raises(psycopg2.OperationalError):
        recorder.flush()
    assert recorder.pending() == 0  # not back in the buffer: it might be written twice
    (path,) = spill.pending(tmp_path)
    assert spill.read(path).batches[0].in_doubt is not None
    assert counted(key) == ((7, 0) if reaches else (0, 0))
    app.config["API_USAGE_SPILL_DIR"] = str(tmp_path)
    try:
        deadline = time.monotonic() + 30
        while True:  # the server may still hold the aborted transaction open for a moment
            result = app.test_cli_runner().invoke(args=["usage", "replay"])
            assert result.exit_code == 0, result.output
            if "Waiting" not in result.output or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        app.config["API_USAGE_SPILL_DIR"] = ""
        recorder.close()
    assert counted(key) == (7, 0)
    assert f"{0 if reaches else 7} usage rows and 0 invalid-key calls written" in result.output
    assert spill.pending(tmp_path) == []


def test_a_damaged_file_is_set_aside_and_the_others_are_written(key, tmp_path, app, caplog):
    good = spill.write(tmp_path, [batch(key, 4, invalid=3)])
    whole = spill.write(tmp_path, [batch(key, 10)]).read_bytes()
    cut = next(path for path in spill.pending(tmp_path) if path != good)
    cut.write_bytes(whole[: len(whole) // 2])  # a file cut short
    (tmp_path / "20000101T000000000000Z-1-garbage.spill").write_bytes(b"\x00\xffnot json")
    (tmp_path / "20000101T000000000001Z-1-empty.spill").write_bytes(b"")
    app.config["API_USAGE_SPILL_DIR"] = str(tmp_path)
    try:
        result = app.test_cli_runner().invoke(args=["usage", "replay"])
        again = app.test_cli_runner().invoke(args=["usage", "replay"])
    finally:
        app.config["API_USAGE_SPILL_DIR"] = ""
    assert result.exit_code == 1
    assert "set aside, not replayed" in result.output and cut.name in result.output
    assert "Traceback" not in result.output
    assert counted(key) == (4, 3)
    assert spill.pending(tmp_path) == [] and len(list(tmp_path.glob("*.rejected"))) == 3
    assert again.exit_code == 0 and "No spill files" in again.output


def test_a_worker_sets_a_damaged_file_aside_once_and_keeps_going(key, tmp_path, caplog):
    (tmp_path / "20000101T000000000000Z-1-garbage.spill").write_text('{"format": "procode-usage-spill"}\n')
    spill.write(tmp_path, [batch(key, 2)])
    recorder = BufferedRecorder(libpq_dsn(key.url), interval=3600, spill_dir=tmp_path)
    try:
        with caplog.at_level("ERROR", logger="portal.verification.usage"):
            first = recorder.replay_spills()
            second = recorder.replay_spills()
    finally:
        recorder.close()
    assert first is not None and first.files == 1 and len(first.rejected) == 1
    assert second is None  # nothing left to look at
    assert len([r for r in caplog.records if "set aside" in r.getMessage()]) == 1
    assert counted(key) == (2, 0)


def test_a_stopping_writer_that_cannot_reach_the_database_spills_within_its_close_timeout(key, tmp_path, caplog):
    recorder = BufferedRecorder(
        "host=127.0.0.1 port=1 dbname=nothing user=nobody connect_timeout=2", interval=3600, spill_dir=tmp_path
    )
    for row in batch(key, 6).rows:
        recorder.add(row)
    recorder.count_invalid(datetime.now(UTC), key.address, "unknown")
    started = time.monotonic()
    with caplog.at_level("WARNING", logger="portal.verification.usage"):
        recorder.close()
        recorder.close()  # the atexit hook after gunicorn's worker_exit: nothing more
    assert time.monotonic() - started < recorder.close_timeout + 2
    (path,) = spill.pending(tmp_path)
    assert [len(b.rows) for b in spill.read(path).batches] == [6]
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "usage flush at shutdown failed" in m]) == 1
    assert "6 usage rows and 1 invalid-key calls kept in" in messages[-1]
    with psycopg2.connect(libpq_dsn(key.url)) as conn:
        spill.replay(conn, tmp_path)
    conn.close()
    assert counted(key) == (6, 1)


def test_spilling_off_logs_what_is_lost(tmp_path, caplog):
    recorder = BufferedRecorder("host=127.0.0.1 port=1 dbname=nothing user=nobody", interval=3600, close_timeout=0.3)
    recorder.add((None, None, datetime.now(UTC), "/x", 401, 1.0, "revoked", None, None))
    with caplog.at_level("ERROR", logger="portal.verification.usage"):
        recorder.close()
    assert any("1 usage rows and 0 invalid-key calls lost" in r.getMessage() for r in caplog.records)
