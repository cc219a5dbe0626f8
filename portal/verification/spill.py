"""Spill files: the usage rows and invalid-key counts a worker could not write, kept on local disk until the
database answers, so a clean stop during an outage loses nothing.

A worker that cannot flush when it stops (the database down or hung), or that lost the answer to a commit, writes
what it holds to one new file in the spill folder: under a temporary name, fsynced, then renamed and the folder
fsynced, so a file is either whole or absent. The usage writer of the next worker to start (off the request path)
and ``flask usage replay`` write each file's rows once the database answers, **exactly once**: the file's id goes
into ``usage_spill_replays`` in the same transaction as its rows, so another replayer (two workers starting
together, or a crash between the commit and the file's removal) finds the id taken and only removes the file. A
batch whose commit was in doubt carries that transaction's id and is written only if it did not commit
(``txid_status``). A file that cannot be read whole is renamed ``*.rejected`` with one log line: it never stops a
worker and never holds up the files after it. The files hold client addresses and user agents, never a key.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg2

from portal.verification.backend import Row
from portal.verification.usage_rows import (
    InvalidKeyCounts,
    make_partitions,
    no_partition,
    row_days,
    write_each,
    write_invalid_key_counts,
    write_usage_rows,
)

log = logging.getLogger("portal.verification.usage")
FORMAT, VERSION = "procode-usage-spill", 1
SUFFIX, REJECTED = ".spill", ".rejected"
CHUNK = 500  # usage rows per INSERT, as the writer sends them

CLAIM_SQL = (
    "INSERT INTO usage_spill_replays (id, usage_rows, invalid_key_calls) VALUES (%s, %s, %s) "
    "ON CONFLICT (id) DO NOTHING RETURNING id"
)
RECORD_SQL = "UPDATE usage_spill_replays SET usage_rows = %s, invalid_key_calls = %s WHERE id = %s"


@dataclass
class Batch:
    """Usage rows and invalid-key counts to write; ``in_doubt``: the id of a transaction that may have written them
    already (its COMMIT was sent, its answer lost), so they are written only if it did not commit."""

    rows: list[Row]
    counts: InvalidKeyCounts
    in_doubt: int | None = None

    def calls(self) -> tuple[int, int]:
        return len(self.rows), sum(self.counts.values())


class Rejected(ValueError):
    """A file that is not a whole spill file of this format."""


@dataclass
class SpillFile:
    path: Path
    id: uuid.UUID
    batches: list[Batch]


@dataclass
class Replayed:
    """What a replay did, for its log line or the command's output."""

    files: int = 0
    rows: int = 0
    invalid_key_calls: int = 0
    refused: int = 0  # usage rows the database refused (logged one by one)
    already: int = 0  # files another replayer had written: only removed
    waiting: list[str] = field(default_factory=list)  # files with a transaction still in progress
    rejected: list[str] = field(default_factory=list)  # "name: reason"


def pending(directory: Path) -> list[Path]:
    """The spill files waiting in ``directory``, oldest first (their names start with the time)."""
    try:
        return sorted(path for path in directory.iterdir() if path.name.endswith(SUFFIX))
    except FileNotFoundError:
        return []


def write(directory: Path, batches: Sequence[Batch]) -> Path:
    """Write ``batches`` to a new spill file in ``directory`` (created if needed); returns its path."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    spill_id = uuid.uuid4()
    name = f"{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}-{os.getpid()}-{spill_id}"
    temporary, final = directory / f".{name}.tmp", directory / f"{name}{SUFFIX}"
    lines = [{"format": FORMAT, "version": VERSION, "id": str(spill_id), "pid": os.getpid()}]
    lines += [_encode(batch) for batch in batches]
    rows, counts = sum(len(b.rows) for b in batches), sum(len(b.counts) for b in batches)
    lines.append({"end": str(spill_id), "rows": rows, "counts": counts})
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as out:
        out.write("".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines))
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, final)
    _fsync_directory(directory)
    return final


def keep(directory: Path | None, batches: Sequence[Batch], why: str) -> bool:
    """Write ``batches`` to a new spill file in ``directory`` and say so in one log line (``why`` first); without a
    folder, or if the disk refuses, log them as lost. Returns whether they were kept."""
    rows = sum(len(batch.rows) for batch in batches)
    calls = sum(sum(batch.counts.values()) for batch in batches)
    if directory is None:
        log.error("%s: %d usage rows and %d invalid-key calls lost", why, rows, calls)
        return False
    try:
        path = write(directory, batches)
    except OSError as exc:
        log.error("%s: %d usage rows and %d invalid-key calls lost: %s", why, rows, calls, exc)
        return False
    log.warning(
        "%s: %d usage rows and %d invalid-key calls kept in %s; the next worker to start, or `flask usage replay`, "
        "writes them once the database answers",
        why,
        rows,
        calls,
        path,
    )
    return True


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _encode(batch: Batch) -> dict[str, Any]:
    rows = [[r[0], r[1], r[2].isoformat(), *r[3:]] for r in batch.rows]
    counts = [[at.isoformat(), address, outcome, calls] for (at, address, outcome), calls in batch.counts.items()]
    return {"in_doubt": batch.in_doubt, "rows": rows, "counts": counts}


def read(path: Path) -> SpillFile:
    """The file's batches; :class:`Rejected` if it is not whole (``FileNotFoundError`` if it is gone)."""
    try:
        lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Rejected(f"not a spill file: {exc}") from None
    if len(lines) < 2 or not all(isinstance(line, dict) for line in lines):
        raise Rejected("not a spill file: it has no end line (cut short?)")
    header, end = lines[0], lines[-1]
    if header.get("format") != FORMAT or header.get("version") != VERSION:
        raise Rejected(f"not a {FORMAT} file of version {VERSION}")
    try:
        spill_id = uuid.UUID(str(header.get("id")))
        batches = [_decode(line) for line in lines[1:-1]]
    except (KeyError, TypeError, ValueError) as exc:
        raise Rejected(f"a batch is malformed: {exc}") from None
    rows, counts = sum(len(b.rows) for b in batches), sum(len(b.counts) for b in batches)
    if end.get("end") != str(spill_id) or end.get("rows") != rows or end.get("counts") != counts:
        raise Rejected("its end line does not match its contents (cut short or edited?)")
    return SpillFile(path, spill_id, batches)


def _text(value: Any, *, optional: bool = True) -> str | None:
    if (value is None and optional) or isinstance(value, str):
        return value  # type: ignore[no-any-return]
    raise TypeError(f"expected text, got {value!r}")


def _decode(line: dict[str, Any]) -> Batch:
    in_doubt = line["in_doubt"]
    if in_doubt is not None and type(in_doubt) is not int:
        raise TypeError("in_doubt must be a transaction id")
    rows: list[Row] = []
    for key_id, org_id, at, endpoint, status, latency, outcome, ip, agent in line["rows"]:
        if type(status) is not int or (latency is not None and type(latency) not in (int, float)):
            raise TypeError("status and latency must be numbers")
        when = datetime.fromisoformat(_text(at, optional=False) or "")
        texts = (_text(key_id), _text(org_id), _text(endpoint), _text(outcome, optional=False), _text(ip), _text(agent))
        rows.append((texts[0], texts[1], when, texts[2], status, latency, texts[3], texts[4], texts[5]))
    counts: InvalidKeyCounts = {}
    for minute, address, outcome, calls in line["counts"]:
        if type(calls) is not int or calls <= 0:
            raise TypeError("calls must be a positive number")
        at = datetime.fromisoformat(_text(minute, optional=False) or "")
        counts[(at, _text(address), _text(outcome, optional=False) or "")] = calls
    return Batch(rows, counts, in_doubt)


def reject(path: Path, reason: str) -> str:
    """Set a file that cannot be replayed aside (``*.rejected``) with one log line; returns ``name: reason``."""
    target = path.with_name(path.name.removesuffix(SUFFIX) + REJECTED)
    try:
        os.replace(path, target)
    except FileNotFoundError:
        return f"{path.name}: gone"
    log.error("usage spill file %s set aside as %s: %s", path.name, target.name, reason)
    return f"{path.name}: {reason}"


def replay(conn: Any, directory: Path) -> Replayed:
    """Write every spill file in ``directory`` on ``conn`` (a psycopg2 connection, not in autocommit mode), each
    exactly once, and remove it. Raises what the database raises (the file stays for the next attempt)."""
    report = Replayed()
    for path in pending(directory):
        try:
            spill = read(path)
        except FileNotFoundError:
            continue  # another replayer removed it
        except Rejected as exc:
            report.rejected.append(reject(path, str(exc)))
            continue
        _replay_file(conn, spill, report)
    return report


def _replay_file(conn: Any, spill: SpillFile, report: Replayed) -> None:
    rows = calls = refused = 0
    try:
        with conn.cursor() as cur:
            # Waits for another replayer's transaction holding the same id, then finds it taken (or free, had
            # that one rolled back): the rows below are written by one transaction only.
            cur.execute(CLAIM_SQL, (str(spill.id), 0, 0))
            if cur.fetchone() is None:
                conn.rollback()
                report.already += 1
                _remove(spill.path)
                return
            for batch in spill.batches:
                if batch.in_doubt is not None:
                    cur.execute("SELECT txid_status(%s)", (batch.in_doubt,))
                    status = cur.fetchone()[0]
                    if status == "committed":
                        continue
                    if status == "in progress":  # the server has not yet noticed the writer is gone
                        conn.rollback()
                        report.waiting.append(spill.path.name)
                        return
                    # "aborted", or NULL (too old to know): written, as losing them would be worse than twice
                refused += _write_batch(cur, batch)
                rows, calls = rows + len(batch.rows), calls + batch.calls()[1]
            cur.execute(RECORD_SQL, (rows - refused, calls, str(spill.id)))
        conn.commit()
    except BaseException:
        with contextlib.suppress(psycopg2.Error):
            conn.rollback()
        raise
    _remove(spill.path)
    report.files += 1
    report.rows += rows - refused
    report.invalid_key_calls += calls
    report.refused += refused
    log.info("usage spill file %s written: %d usage rows, %d invalid-key calls", spill.path.name, rows - refused, calls)


def _write_batch(cur: Any, batch: Batch, retry: bool = True) -> int:
    """The batch in one go, or row by row if the database refuses some (logged and dropped): how many it refused.
    Rows of a day that has no partition (a file kept over a long outage) make it and are written again."""
    cur.execute("SAVEPOINT spill_batch")
    try:
        for start in range(0, len(batch.rows), CHUNK):
            write_usage_rows(cur, batch.rows[start : start + CHUNK])
        write_invalid_key_counts(cur, batch.counts)
    except (psycopg2.DataError, psycopg2.IntegrityError) as exc:
        cur.execute("ROLLBACK TO SAVEPOINT spill_batch")
        if retry and no_partition(exc):
            created = make_partitions(cur, row_days(batch.rows))
            log.warning("usage spill replay: a batch found no usage partition; made %d and wrote it again", created)
            return _write_batch(cur, batch, retry=False)
        return write_each(cur, batch.rows, batch.counts)
    return 0


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        return  # another replayer removed it first
    _fsync_directory(path.parent)
