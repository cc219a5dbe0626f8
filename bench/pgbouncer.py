"""Debian's PgBouncer between the benchmark's gunicorn and PostgreSQL (``make bench-verify --pgbouncer MODE``)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from pathlib import Path

import sqlalchemy as sa

POOL_SIZE = 20  # server connections per database: more than the benchmark's workers hold at once


class PgBouncer:
    """PgBouncer in ``pool_mode`` on ``port``, offering every database of ``server_url``'s server as its user."""

    def __init__(self, server_url: str, pool_mode: str, port: int, workdir: Path) -> None:
        binary = shutil.which("pgbouncer", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"]))
        if binary is None:
            raise SystemExit("pgbouncer is not installed (apt-get install pgbouncer)")
        url = sa.make_url(server_url)
        host = str(url.query.get("host") or url.host or "127.0.0.1")
        server = f"host={host} port={url.port or 5432} user={url.username or 'postgres'}"
        if url.password:
            server += f" password={url.password}"
        self.port, self.pool_mode = port, pool_mode
        config = workdir / f"pgbouncer-{port}.ini"
        config.write_text(
            f"[databases]\n* = {server}\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n"
            f"unix_socket_dir =\nauth_type = any\npool_mode = {pool_mode}\ndefault_pool_size = {POOL_SIZE}\n"
            "max_client_conn = 2000\nlog_connections = 0\nlog_disconnections = 0\n"
        )
        as_user: list[str] = []
        if os.geteuid() == 0:  # PgBouncer will not run as root
            owner = pwd.getpwuid(os.stat(host).st_uid).pw_name if host.startswith("/") else "nobody"
            as_user = ["-u", owner]
        self.log_path = workdir / f"pgbouncer-{port}.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen([binary, *as_user, str(config)], stdout=log, stderr=subprocess.STDOUT)  # noqa: S603
        deadline = time.monotonic() + 30
        while f"listening on 127.0.0.1:{port}" not in self.log_path.read_text():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit(f"pgbouncer did not start:\n{self.log_path.read_text()}")
            time.sleep(0.1)

    def url(self, database_url: str) -> str:
        """``database_url`` reached through this PgBouncer."""
        parsed = sa.make_url(database_url)
        query = {name: value for name, value in parsed.query.items() if name != "host"}
        return parsed.set(host="127.0.0.1", port=self.port, password=None, query=query).render_as_string(
            hide_password=False
        )

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(15)
