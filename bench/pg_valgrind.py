"""A private PostgreSQL cluster whose backends valgrind counts, for ``make bench-verify-cpu``'s PostgreSQL side.

CPU seconds of PostgreSQL backends on a shared machine are too noisy to compare two checkouts (the same run reads
anywhere from 23 to 231 µs per call); the instructions they execute are not. The cluster is created and loaded
normally (migrations and keys would take minutes under valgrind), then restarted with the postmaster under
cachegrind: every backend it forks is counted into its own file, named by its pid, written when it exits. The
server log's connection lines say which backends served which database, so each checkout's side, on its own
database, adds up its own backends.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import subprocess
import time
from pathlib import Path

CONNECTION_LINE = re.compile(
    r"^(\d+) LOG:\s+connection authorized: user=\S+ database=(\S+)(?: application_name=(\S+))?", re.MULTILINE
)


def postgres_bindir() -> Path:
    """The newest Debian PostgreSQL (``/usr/lib/postgresql/N/bin``), else ``pg_config --bindir``."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    pg_config = shutil.which("pg_config")
    if pg_config:
        bindir = Path(subprocess.run([pg_config, "--bindir"], capture_output=True, text=True).stdout.strip())
        if (bindir / "postgres").exists():
            return bindir
    raise SystemExit("no PostgreSQL server binaries (apt-get install postgresql); --no-postgres skips this count")


class ValgrindCluster:
    """initdb in ``directory``, served on ``port``; as the ``postgres`` user when run as root."""

    def __init__(self, directory: Path, port: int) -> None:
        self.bindir = postgres_bindir()
        self.directory, self.port = directory, port
        self.data, self.counts, self.log = directory / "data", directory / "counts", directory / "server.log"
        self._as: list[str] = []
        if os.geteuid() == 0:
            self._as = ["runuser", "-u", "postgres", "--"]
            directory.mkdir(parents=True, exist_ok=True)
            owner = pwd.getpwnam("postgres")
            os.chown(directory, owner.pw_uid, owner.pw_gid)
        self._server: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *command: str) -> None:
        out = subprocess.run([*self._as, *command], capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"{' '.join(command[:2])} failed:\n{out.stdout}{out.stderr}")

    def init(self) -> None:
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        self._run("mkdir", "-p", str(self.counts))
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.directory}'",
            "autovacuum": "off",  # no background work changing what a backend finds
            "fsync": "off",
            "log_connections": "on",
            "log_line_prefix": "'%p '",
            "logging_collector": "off",
        }
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())

    def start(self, *, counted: bool, tool: str = "cachegrind") -> None:
        """Start the server, plainly or with the postmaster (and so every backend) under valgrind: cachegrind
        counts, callgrind also profiles (``callgrind_annotate`` reads each backend's file)."""
        command = [str(self.bindir / "postgres"), "-D", str(self.data)]
        if counted:
            out = str(self.counts / "backend.%p")
            options = ["--cache-sim=no"] if tool == "cachegrind" else []
            command = ["valgrind", f"--tool={tool}", *options, f"--{tool}-out-file={out}", *command]
        with self.log.open("ab") as log:
            self._server = subprocess.Popen([*self._as, *command], stdout=log, stderr=subprocess.STDOUT)
        self._wait_ready(180 if counted else 30)

    def _wait_ready(self, seconds: float) -> None:
        import psycopg2

        deadline = time.monotonic() + seconds
        while True:
            try:
                psycopg2.connect(self.url, connect_timeout=5).close()
                return
            except psycopg2.OperationalError:
                if self._server is not None and self._server.poll() is not None:
                    raise SystemExit(f"PostgreSQL did not start; its log: {self.log}") from None
                if time.monotonic() > deadline:
                    raise SystemExit(f"PostgreSQL did not answer within {seconds:.0f} s; its log: {self.log}") from None
                time.sleep(0.5)

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.terminate()  # SIGTERM: smart shutdown
        try:
            self._server.wait(180)
        except subprocess.TimeoutExpired:
            self._server.kill()
            self._server.wait()
        self._server = None

    def backends(self, database: str) -> dict[int, str]:
        """Every backend that connected to ``database`` so far: pid -> its client's application name."""
        text = self.log.read_text(errors="replace")
        return {int(pid): app or "-" for pid, name, app in CONNECTION_LINE.findall(text) if name == database}

    def instructions(self, backends: dict[int, str], wait: float = 120.0) -> dict[str, int]:
        """The Ir totals of those backends by application name, waiting for each to exit and write its count."""
        totals: dict[str, int] = {}
        for pid, app in sorted(backends.items()):
            path = self.counts / f"backend.{pid}"
            deadline = time.monotonic() + wait
            while not _complete(path):
                if time.monotonic() > deadline:
                    raise SystemExit(f"backend {pid} wrote no instruction count into {path}")
                time.sleep(0.2)
            totals[app] = totals.get(app, 0) + _summary(path)
        return totals


def _complete(path: Path) -> bool:
    return (
        path.exists() and re.search(r"^(?:summary|totals):", path.read_text(errors="replace"), re.MULTILINE) is not None
    )


def _summary(path: Path) -> int:
    match = re.search(r"^(?:summary|totals):\s+(\d+)", path.read_text(), re.MULTILINE)
    if match is None:
        raise SystemExit(f"no instruction total in {path}")
    return int(match.group(1))
