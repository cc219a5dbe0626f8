"""Under gevent (the shipped gunicorn worker) a query or a password hash must not stall the worker's loop.

Each test runs a small script in a fresh interpreter with gevent's monkey-patching, as a gevent worker
does; patching the test process itself would change every other test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from typing import Any

from portal.verification.backend import DirectBackend, _Call, libpq_dsn
from tests.scripts import ROOT, run_python


def run_patched(script: str) -> dict[str, Any]:
    """Run ``script`` after ``gevent.monkey.patch_all()``, as a gevent worker does."""
    return run_python("from gevent import monkey\nmonkey.patch_all()\n" + textwrap.dedent(script))  # type: ignore[no-any-return]


def test_a_waiting_query_lets_other_greenlets_run(database_url):
    """Greenlet ``b`` waits in PostgreSQL for a lock that greenlet ``a`` releases only after ``b`` is waiting:
    with blocking psycopg2 ``a`` could never run again and ``b`` would hit its lock timeout."""
    result = run_patched(
        """
        import json, gevent, psycopg2
        from portal import create_app
        from psycopg2 import extensions

        app = create_app({"SQLALCHEMY_DATABASE_URI": DSN}, env="testing")  # installs the wait callback
        events = []

        def a(holder):
            cur = holder.cursor()
            cur.execute("SELECT pg_advisory_lock(424242)")
            events.append("a locked")
            gevent.spawn(b)
            for _ in range(1000):  # until b's query is waiting on the lock in PostgreSQL (10 s at most)
                gevent.sleep(0.01)
                cur.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 424242 "
                            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                            "AND NOT granted")
                if cur.fetchone()[0]:
                    break
            events.append("a releases")
            cur.execute("SELECT pg_advisory_unlock(424242)")

        def b():
            conn = psycopg2.connect(DSN)
            cur = conn.cursor()
            cur.execute("SET lock_timeout = '5s'")
            events.append("b waits")
            cur.execute("SELECT pg_advisory_lock(424242)")
            events.append("b locked")
            conn.close()

        holder = psycopg2.connect(DSN)
        holder.autocommit = True
        gevent.joinall([gevent.spawn(a, holder)])
        gevent.wait(timeout=30)
        print(json.dumps({"green": extensions.get_wait_callback() is not None, "events": events}))
        """.replace("DSN", repr(libpq_dsn(database_url)))
    )
    assert result["green"]
    assert result["events"] == ["a locked", "b waits", "a releases", "b locked"]


def test_password_hashing_yields_to_other_greenlets(database_url):
    """While one greenlet hashes a password (argon2id, real cost), another still gets to run: the hash
    runs in gevent's thread pool, so it is not finished when the other greenlet looks."""
    result = run_patched(
        """
        import json, gevent
        from portal import create_app
        from portal.security import hash_password, verify_password

        app = create_app({"SQLALCHEMY_DATABASE_URI": DSN, "ARGON2_TIME_COST": 3,
                          "ARGON2_MEMORY_COST": 65536, "ARGON2_PARALLELISM": 4}, env="testing")

        def in_app(function, *args):
            with app.app_context():  # each greenlet has its own context, as each request has
                return function(*args)

        hashing = gevent.spawn(in_app, hash_password, "correct horse battery staple")
        seen_running = gevent.spawn(lambda: not hashing.ready()).get()
        digest = hashing.get()
        ok = in_app(verify_password, digest, "correct horse battery staple")
        wrong = in_app(verify_password, digest, "wrong")
        print(json.dumps({"seen_running": seen_running, "ok": ok, "wrong": wrong,
                          "argon2id": digest.startswith("$argon2id$")}))
        """.replace("DSN", repr(database_url))
    )
    assert result == {"seen_running": True, "ok": True, "wrong": False, "argon2id": True}


def test_a_killed_waiter_does_not_stall_the_next_verifications():
    """A greenlet killed while it waits in the queue (first in line to lead the next group) leaves it: the
    calls queued behind it and every later call are still answered, instead of waiting for a dead leader."""
    result = run_patched(
        """
        import json, gevent
        from gevent.event import Event
        from portal.verification.backend import DirectBackend

        backend = DirectBackend("postgresql://unused")
        release, groups = Event(), []

        def verify_many(hashes, *calls):  # stands in for the database: the first group waits until released
            groups.append(len(hashes))
            if len(groups) == 1:
                release.wait()
            return [None] * len(hashes)

        backend.verify_many = verify_many
        leader = gevent.spawn(backend.verify, b"a")
        gevent.sleep(0)
        doomed, behind = gevent.spawn(backend.verify, b"b"), gevent.spawn(backend.verify, b"c")
        gevent.sleep(0)  # both queue behind the leader's group; the doomed call is next in line to lead
        doomed.kill()
        release.set()
        behind.join(timeout=5)
        later = gevent.spawn(backend.verify, b"d")
        later.join(timeout=5)
        print(json.dumps({"behind": behind.successful(), "later": later.successful(), "groups": groups}))
        """
    )
    assert result == {"behind": True, "later": True, "groups": [1, 1, 1]}


def test_a_waiter_killed_just_after_being_handed_the_lead_passes_it_on():
    """The lead was handed to a queued call (its event set) and its greenlet dies before it runs (a timeout
    firing in the same loop turn): it must pass the lead on, or every later call of the worker would wait.
    The moment cannot be staged through gevent's scheduler reliably, so the queue is set up as it is then."""
    backend = DirectBackend("postgresql://unused")
    backend.verify_many = lambda hashes, *calls: [None] * len(hashes)  # type: ignore[method-assign]
    doomed, behind = _Call(b"b"), _Call(b"c")
    backend._queue, backend._leading = [doomed, behind], True
    doomed.event.set()  # handed the lead by the group that just finished
    backend._abandon(doomed)
    assert backend._queue == [behind] and behind.event.is_set() and backend._leading
    backend._abandon(behind)  # the next one dies the same way: nobody is left to lead
    assert backend._queue == [] and not backend._leading
    later = threading.Thread(target=backend.verify, args=(b"d",), daemon=True)
    later.start()
    later.join(timeout=5)
    assert not later.is_alive()  # it led its own group instead of waiting for a dead leader


def test_gunicorn_refuses_preload_with_gevent(database_url):
    """With --preload the app would be built before gevent patches the process (blocking queries)."""
    out = subprocess.run(  # noqa: S603 - our own server, run with this interpreter
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--preload", "-b", "127.0.0.1:0", "wsgi:app"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": database_url, "SECRET_KEY": "s" * 32, "API_KEY_PEPPER": "p" * 32},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert "--preload is not supported with gevent workers" in out.stdout + out.stderr


def test_a_silent_database_fails_the_connection_after_connect_timeout(database_url):
    """A host that accepts TCP but never answers (a hung server) must not hold a cooperative connection for
    as long as TCP waits: it fails after ``connect_timeout``, the loop keeps running meanwhile, and the
    verification answers 503; a slow query on a connection already made is not cut short."""
    result = run_patched(
        """
        import json, socket, time, gevent, psycopg2
        import sqlalchemy as sa
        from portal import create_app
        from portal.verification.backend import DirectBackend, libpq_dsn
        from portal.verification.outcomes import DatabaseUnavailable

        app = create_app({"SQLALCHEMY_DATABASE_URI": DSN}, env="testing")
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the handshake; nobody ever reads or writes
        url = "postgresql://nobody@127.0.0.1:%d/none?connect_timeout=2" % silent.getsockname()[1]
        ticks = []
        ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.1)) for _ in range(1000)])
        started = time.monotonic()
        try:
            psycopg2.connect(libpq_dsn(url))
            error = None
        except psycopg2.OperationalError as exc:
            error = str(exc)
        connect_s = time.monotonic() - started
        ticks_while_connecting = len(ticks)
        backend = DirectBackend(libpq_dsn(url))
        started = time.monotonic()
        try:
            backend.verify(b"x" * 32)
            verify = "answered"
        except DatabaseUnavailable:
            verify = "unavailable"
        verify_s = time.monotonic() - started
        quick = sa.make_url(DSN).update_query_dict({"connect_timeout": "2"})
        conn = psycopg2.connect(libpq_dsn(quick.render_as_string(hide_password=False)))
        cur = conn.cursor()
        cur.execute("SELECT pg_sleep(3), 'slept'")
        slow = cur.fetchone()[1]
        ticker.kill()
        print(json.dumps({"error": error, "connect_s": connect_s, "ticks": ticks_while_connecting, "verify": verify,
                          "verify_s": verify_s, "slow": slow}))
        """.replace("DSN", repr(database_url))
    )
    assert result["error"] and "timeout expired" in result["error"], result
    assert 1.5 < result["connect_s"] < 10
    assert result["ticks"] >= 10  # the event loop ran while the connection waited
    assert result["verify"] == "unavailable"
    assert result["verify_s"] < 20  # two attempts, each cut off at the timeout
    assert result["slow"] == "slept"


def test_a_database_that_stops_answering_mid_connection_answers_503(database_url):
    """The connection is open and the server's host still acknowledges TCP, but nothing comes back (a hung
    server): the verification gives up after its timeout with 503, instead of holding the worker forever,
    and a fresh connection is tried once the server answers again."""
    result = run_patched(
        """
        import json, socket, time, gevent, psycopg2
        from gevent.server import StreamServer
        from portal import create_app
        from portal.verification.backend import DirectBackend
        from portal.verification.outcomes import DatabaseUnavailable

        app = create_app({"SQLALCHEMY_DATABASE_URI": DSN}, env="testing")
        probe = psycopg2.connect(DSN_LIBPQ)
        info = probe.info
        upstream = (socket.AF_UNIX, f"{info.host}/.s.PGSQL.{info.port}") if info.host.startswith("/") else (
            socket.AF_INET, (info.host, info.port))
        frozen = []

        def pipe(src, dst):
            while True:
                data = src.recv(65536)
                while frozen:  # hold what arrived, answer nothing
                    gevent.sleep(0.05)
                if not data:
                    break
                dst.sendall(data)

        def handle(client, _addr):
            server = socket.socket(upstream[0])
            server.connect(upstream[1])
            gevent.joinall([gevent.spawn(pipe, client, server), gevent.spawn(pipe, server, client)])

        proxy = StreamServer(("127.0.0.1", 0), handle)
        proxy.start()
        dsn = (f"host=127.0.0.1 port={proxy.server_port} dbname={info.dbname} user={info.user} "
               f"connect_timeout=2" + (f" password={info.password}" if info.password else ""))
        backend = DirectBackend(dsn, timeout=1.0)
        first = backend.verify(b"x" * 32)  # no such key: None, through the proxy
        frozen.append(True)
        started = time.monotonic()
        try:
            backend.verify(b"y" * 32)
            hung = "answered"
        except DatabaseUnavailable:
            hung = "unavailable"
        hung_s = time.monotonic() - started
        frozen.clear()
        again = backend.verify(b"z" * 32)
        print(json.dumps({"first": first, "hung": hung, "hung_s": hung_s, "again": again}))
        """.replace("DSN_LIBPQ", repr(libpq_dsn(database_url))).replace("DSN", repr(database_url))
    )
    assert result["first"] is None and result["again"] is None
    assert result["hung"] == "unavailable"
    assert 0.9 < result["hung_s"] < 2  # the 1 s deadline, not TCP's minutes
