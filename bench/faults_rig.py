"""The system the fault matrix (bench/faults.py) breaks: a private PostgreSQL cluster, the portal's database on
it, gunicorn with the shipped gunicorn.conf.py, and (for the proxy scenarios) docs/deploy/nginx.conf in front.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.faults_client import verification
from bench.faults_cluster import Cluster
from bench.harness import Gunicorn, admin, free_ports, log, with_db
from bench.verify import PEPPER, migrate, seed
from tests.servers import gateway_binary, proxy

HOST = "127.0.0.1"
DEFAULT_PORTS = range(22000, 22100)  # away from the ports the test suite and the other benchmarks use


@dataclass(frozen=True)
class Settings:
    """How long each phase lasts and how hard the clients push."""

    quick: bool = False
    deadline: float = 5.0  # the verification deadline the portal promises (seconds)
    flush_interval: float = 0.2  # API_USAGE_FLUSH_INTERVAL as shipped
    graceful_timeout: float = 30.0  # gunicorn.conf.py
    read_timeout: float = 10.0  # GUNICORN_REQUEST_READ_TIMEOUT as shipped
    clients: int = 32
    rate: float = 280.0
    flood: int = 2000
    malformed: int = 2000

    @property
    def before(self) -> float:
        """Load before the fault."""
        return 3.0 if self.quick else 5.0

    @property
    def after(self) -> float:
        """Load after the fault ends."""
        return 5.0 if self.quick else 10.0

    @property
    def stopped(self) -> float:
        return 8.0 if self.quick else 20.0

    @property
    def frozen(self) -> float:
        return 8.0 if self.quick else 15.0

    @property
    def hold(self) -> float:
        """How long a flood is watched: past the read timeout, so the server's closing of it is seen."""
        return self.read_timeout + 6.0


class Rig:
    """Owns every process it starts, and stops them all in :meth:`close`."""

    def __init__(self, ports: range, settings: Settings) -> None:
        self.settings = settings
        self.workdir = Path(tempfile.mkdtemp(prefix="procode-faults-"))
        pg_port, self.port, self.proxy_port = free_ports(3, ports)
        self.workers = int(os.environ.get("GUNICORN_WORKERS", str(max(2, os.cpu_count() or 2))))
        self.cluster = Cluster(pg_port)
        self.server: Gunicorn | None = None
        self.runs = 0
        self._proxy: contextlib.ExitStack | None = None
        self.proxy_base: str | None = None
        self.url = with_db(self.cluster.url, "procode_faults")
        try:
            self.cluster.start()
            admin(self.cluster.url, 'CREATE DATABASE "procode_faults"')
            log(f"private PostgreSQL on 127.0.0.1:{pg_port} ({self.cluster.bin}); migrating, seeding 10,000 keys")
            migrate(self.url)
            self.keys: list[str] = seed(self.url, self.workdir)["keys"]
        except BaseException:
            self.close()
            raise

    # --- gunicorn -------------------------------------------------------------------------------------------

    def start_gunicorn(self) -> Gunicorn:
        """gunicorn with the shipped gunicorn.conf.py (gevent workers, one per core) on the rig's port."""
        self.runs += 1
        run_dir = self.workdir / f"run-{self.runs}"
        run_dir.mkdir()
        # One spill folder for every run: the rows a stop during an outage spills are written by the next run.
        spill = {"API_USAGE_SPILL_DIR": str(self.workdir / "usage-spill")}
        self.server = Gunicorn("wsgi:app", self.url, self.port, self.workers, 8, run_dir, PEPPER, extra_env=spill)
        return self.server

    def gunicorn(self) -> Gunicorn:
        if self.server is None or self.server.proc.poll() is not None:
            return self.start_gunicorn()
        return self.server

    def terminate(self) -> float:
        """SIGTERM the master (a clean stop: workers finish their calls and flush); seconds until it exited."""
        server = self.gunicorn()
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(120)
        server.log_file.close()
        return time.monotonic() - started

    def log_text(self) -> str:
        return "" if self.server is None else self.server.log_path.read_text(errors="replace")

    # --- nginx ----------------------------------------------------------------------------------------------

    def proxy(self) -> int | None:
        """docs/deploy/nginx.conf in front of gunicorn (started once); its port, or None without nginx."""
        if self.proxy_base is None:
            if gateway_binary("nginx") is None:
                return None
            self._proxy = contextlib.ExitStack()
            self.proxy_base = self._proxy.enter_context(
                proxy(f"http://{HOST}:{self.port}", self.workdir / "nginx", port=self.proxy_port)
            )
        return self.proxy_port

    # --- readiness ------------------------------------------------------------------------------------------

    def ready(self) -> None:
        """The cluster running and thawed, gunicorn up, and a verification answered 200."""
        self.cluster.thaw()
        if not (self.cluster.data / "postmaster.pid").exists():
            self.cluster.start()
        self.gunicorn()
        deadline = time.monotonic() + 60
        while True:
            conn = http.client.HTTPConnection(HOST, self.port, timeout=10)
            try:
                conn.request(
                    "POST",
                    "/v1/keys/verify",
                    verification(self.keys[0], "/f/ready/0"),
                    {"Content-Type": "application/json"},
                )
                if conn.getresponse().status == 200:
                    return
            except (OSError, http.client.HTTPException):
                pass
            finally:
                conn.close()
            if time.monotonic() > deadline:
                raise RuntimeError(f"the portal did not answer 200 within 60 s:\n{self.log_text()[-3000:]}")
            time.sleep(0.5)

    def close(self, *, keep: bool = False) -> None:
        if self._proxy is not None:
            self._proxy.close()
        if self.server is not None and self.server.proc.poll() is None:
            workers = self.server.worker_pids()
            self.server.proc.send_signal(signal.SIGQUIT)  # gunicorn's quick stop: its workers go at once
            try:
                self.server.proc.wait(30)
            except subprocess.TimeoutExpired:
                for pid in [self.server.proc.pid, *map(int, workers)]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                self.server.proc.wait(30)
        self.cluster.close()
        if keep:
            log(f"logs kept in {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)
