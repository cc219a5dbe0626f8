"""A private PostgreSQL 15 cluster that a test may stop, start and freeze, started with initdb and pg_ctl on a free
loopback port (TCP only) in a temporary directory.

Freezing sends SIGSTOP to the postmaster and every backend: the host's kernel still completes TCP handshakes and
acknowledges every packet, but nothing answers, which is what a hung database server looks like to the portal.
As root, the cluster runs as the ``postgres`` system user (initdb refuses root).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from tests.servers import free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")
CLUSTER_PORTS = range(21500, 21600)


def available() -> bool:
    """Whether PostgreSQL 15's server binaries are installed (Debian's postgresql-15)."""
    return all((PG_BIN / name).exists() for name in ("initdb", "pg_ctl", "postgres"))


class Cluster:
    """One private cluster: ``url`` of its ``postgres`` database, and what a test does to the server."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.data = root / "data"
        self.port = port
        self.url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        self.frozen = False

    def _run(self, *command: str | Path) -> None:
        argv = [str(part) for part in command]
        if os.geteuid() == 0:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)  # noqa: S603 - our own binaries
        assert done.returncode == 0, f"{Path(str(command[0])).name} failed: {done.stdout}{done.stderr}"

    def database_url(self, name: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def start(self) -> None:
        options = f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories='' -c fsync=off"
        self._run(PG_BIN / "pg_ctl", "-D", self.data, "-l", self.root / "server.log", "-o", options, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: clients are disconnected and refused until :meth:`start`)."""
        self.thaw()
        self._run(PG_BIN / "pg_ctl", "-D", self.data, "-m", mode, "-w", "stop")

    def postmaster(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def _backends(self, postmaster: int) -> list[int]:
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with suppress(OSError):
                    # The parent pid is the second field after the command name, which may hold spaces.
                    if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == postmaster:
                        pids.append(int(entry.name))
        return pids

    def freeze(self) -> None:
        """SIGSTOP the postmaster first (it forks no more backends), then every backend."""
        postmaster = self.postmaster()
        os.kill(postmaster, signal.SIGSTOP)
        self.frozen = True
        for pid in self._backends(postmaster):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        if not self.frozen:
            return
        postmaster = self.postmaster()
        for pid in self._backends(postmaster):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        os.kill(postmaster, signal.SIGCONT)
        self.frozen = False

    @contextmanager
    def frozen_for_a_while(self) -> Iterator[None]:
        self.freeze()
        try:
            yield
        finally:
            self.thaw()


def portal_database(cluster: Cluster, name: str = "procode") -> tuple[str, str]:
    """A migrated portal database on ``cluster`` with a Pro organization and one of its keys, committed: the
    database's URL and the key (valid under :data:`tests.servers.SECRETS`)."""
    from flask_migrate import upgrade

    from portal import create_app
    from portal.api import get_verifier
    from portal.db import ensure_database, normalize_url
    from portal.extensions import db
    from tests import factories
    from tests.servers import SECRETS

    ensure_database(cluster.url, name)
    url = normalize_url(cluster.database_url(name))
    app = create_app({"SQLALCHEMY_DATABASE_URI": url, **SECRETS}, env="testing")
    with app.app_context():
        upgrade()
        org = factories.org(plan="pro")
        key = factories.api_key(org, factories.member(org, "owner")).plaintext
        db.session.remove()
        db.engine.dispose()
    get_verifier(app).close()
    return url, key


@contextmanager
def private_cluster() -> Iterator[Cluster]:
    """A fresh cluster (trust authentication, no fsync), running; stopped and removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="procode-pg15-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    cluster = Cluster(root, free_port(CLUSTER_PORTS))
    try:
        cluster._run(PG_BIN / "initdb", "-D", cluster.data, "-U", "postgres", "--auth=trust", "-E", "UTF8")
        for _attempt in range(5):
            try:
                cluster.start()
                break
            except AssertionError:  # the port was taken meanwhile: another one
                cluster.port = free_port(CLUSTER_PORTS)
                cluster.url = cluster.database_url("postgres")
        else:
            raise AssertionError((root / "server.log").read_text())
        yield cluster
    finally:
        with suppress(Exception):
            cluster.thaw()
        with suppress(Exception):
            cluster.stop("immediate")
        deadline = time.monotonic() + 10
        while (cluster.data / "postmaster.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        shutil.rmtree(root, ignore_errors=True)
