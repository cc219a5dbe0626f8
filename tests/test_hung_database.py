"""A hung database (PostgreSQL frozen with SIGSTOP: its host still acknowledges TCP, nothing answers) costs each
verification one deadline at most: every call answers 503 with Retry-After within the deadline (+1 s), none waits
for the database to come back, and once it is back the next call is answered 200.

Through a real gunicorn (gevent workers, /v1/keys/verify and a ``@require_api_key`` route), through the engine
in this process (threads) and under gevent in a fresh interpreter, against a private PostgreSQL 15 cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from types import SimpleNamespace
from typing import Any

import pytest

from portal.verification.outcomes import DatabaseUnavailable
from portal.verification.verifier import build_verifier
from tests import pgcluster
from tests.scripts import run_python
from tests.servers import ROOT, SECRETS, gunicorn

pytestmark = pytest.mark.concurrency

DEADLINE = 1.0  # seconds: the deadline the tests configure, short to keep them quick
# In a thread, a connection attempt is bounded by libpq's connect_timeout: whole seconds, 2 at least.
THREAD_DEADLINE = 2.0
SLACK = 1.0  # what an answer may take beyond the deadline
CALLS = 12  # concurrent calls while the database is frozen
STREAM = 40  # then calls arriving every 50 ms while it stays frozen


@pytest.fixture(scope="module")
def hung() -> Iterator[SimpleNamespace]:
    """A private cluster with a migrated database, a Pro organization and one of its keys (committed)."""
    if not pgcluster.available():
        pytest.skip("needs PostgreSQL 15's server binaries (Debian's postgresql-15)")
    with pgcluster.private_cluster() as cluster:
        url, key = pgcluster.portal_database(cluster)
        yield SimpleNamespace(cluster=cluster, url=url, key=key)


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    started = time.monotonic()
    try:
        result = call()
    except DatabaseUnavailable:
        result = "unavailable"
    return result, time.monotonic() - started


def all_at_once(call: Callable[[], Any], count: int, within: float) -> list[tuple[Any, float]]:
    """``count`` concurrent ``call()``s, each with how long it took; fails if any has not returned ``within``."""
    pool = ThreadPoolExecutor(count)
    try:
        futures = [pool.submit(timed, call) for _ in range(count)]
        done, pending = wait(futures, timeout=within)
        assert not pending, f"{len(pending)} of {count} calls still waiting on the frozen database"
        return [future.result() for future in done]
    finally:
        pool.shutdown(wait=False)


def in_thread(call: Callable[[], Any], within: float) -> Any:
    """``call()``'s result, or a failure if it does not return ``within`` seconds (it must not hang)."""
    results: list[Any] = []
    thread = threading.Thread(target=lambda: results.append(call()), daemon=True)
    thread.start()
    thread.join(within)
    assert results, "the call after the database came back did not return"
    return results[0]


def test_in_process_every_call_answers_503_within_the_deadline(hung):
    """Threads (gthread workers, ``flask run``): the leader's statement is ended by the watchdog, the calls
    queued behind it answer at their own deadline or at once, and the next call after the thaw is answered."""
    verifier = build_verifier(hung.url, SECRETS["API_KEY_PEPPER"], timeout=THREAD_DEADLINE)
    try:
        assert verifier.verify(hung.key, "/warm-up").outcome == "ok"
        with hung.cluster.frozen_for_a_while():
            answers = all_at_once(lambda: verifier.verify(hung.key, "/frozen").outcome, CALLS, THREAD_DEADLINE + 10)
            lone, lone_s = timed(lambda: verifier.verify(hung.key, "/frozen").outcome)
        assert [outcome for outcome, _ in answers] == ["unavailable"] * CALLS
        assert max(seconds for _, seconds in answers) <= THREAD_DEADLINE + SLACK, answers
        assert lone == "unavailable" and lone_s <= THREAD_DEADLINE + SLACK
        assert in_thread(lambda: verifier.verify(hung.key, "/thawed").outcome, within=10) == "ok"
    finally:
        verifier.close()


def test_under_gevent_every_call_answers_503_within_the_deadline(hung):
    """The shipped worker's way: greenlets, psycopg2 made cooperative, the deadline cutting the socket wait. Once
    the database has not answered, only one call at a time tries it, and the calls arriving meanwhile do not wait."""
    script = textwrap.dedent(
        """
        from gevent import monkey
        monkey.patch_all()
        import json, time, gevent
        from pathlib import Path
        from portal import green
        from portal.verification.outcomes import DatabaseUnavailable
        from portal.verification.verifier import build_verifier
        from tests.pgcluster import Cluster

        green.init_psycopg2()
        cluster = Cluster(Path(ROOT), PORT)
        verifier = build_verifier(URL, PEPPER, timeout=DEADLINE)

        def timed(path):
            started = time.monotonic()
            try:
                outcome = verifier.verify(KEY, path).outcome
            except DatabaseUnavailable:
                outcome = "unavailable"
            return outcome, time.monotonic() - started

        connecting, most = [0], [0]  # connection attempts in flight, and the most at once
        connect = verifier.backend.connect

        def counted_connect(*args):
            connecting[0] += 1
            most[0] = max(most[0], connecting[0])
            try:
                return connect(*args)
            finally:
                connecting[0] -= 1

        verifier.backend.connect = counted_connect
        warm = timed("/warm-up")[0]
        cluster.freeze()
        try:
            calls = [gevent.spawn(timed, "/frozen") for _ in range(CALLS)]
            gevent.joinall(calls, timeout=DEADLINE + 10)
            answers = [call.value for call in calls]
            lone = timed("/frozen")
            stream = []  # a steady stream while it stays frozen
            for _ in range(STREAM):
                stream.append(gevent.spawn(timed, "/frozen"))
                gevent.sleep(0.05)
            gevent.joinall(stream, timeout=DEADLINE + 10)
            streamed = [call.value for call in stream]
        finally:
            cluster.thaw()
        after = gevent.spawn(timed, "/thawed")
        after.join(timeout=10)
        print(json.dumps({"warm": warm, "answers": answers, "lone": lone, "streamed": streamed,
                          "most_connecting": most[0], "after": after.value}))
        """
    )
    for name, value in {
        "ROOT": repr(str(hung.cluster.root)),
        "PORT": str(hung.cluster.port),
        "URL": repr(hung.url),
        "PEPPER": repr(SECRETS["API_KEY_PEPPER"]),
        "KEY": repr(hung.key),
        "DEADLINE": repr(DEADLINE),
        "CALLS": str(CALLS),
        "STREAM": str(STREAM),
    }.items():
        script = script.replace(name, value)
    result = run_python(script)
    assert result["warm"] == "ok"
    assert None not in result["answers"], "a call was still waiting on the frozen database"
    assert [outcome for outcome, _ in result["answers"]] == ["unavailable"] * CALLS
    assert max(seconds for _, seconds in result["answers"]) <= DEADLINE + SLACK, result["answers"]
    assert result["lone"][0] == "unavailable" and result["lone"][1] <= DEADLINE + SLACK
    # While it stays frozen, one call at a time tries a connection; the others answer 503 at once.
    assert None not in result["streamed"]
    assert [outcome for outcome, _ in result["streamed"]] == ["unavailable"] * STREAM
    assert max(seconds for _, seconds in result["streamed"]) <= DEADLINE + SLACK
    assert result["most_connecting"] == 1
    assert sum(seconds < 0.1 for _, seconds in result["streamed"]) >= STREAM // 2
    assert result["after"] is not None and result["after"][0] == "ok"


def call(base: str, path: str, key: str, timeout: float) -> tuple[int, dict[str, str], Any]:
    """One call to the served portal: status, headers and JSON body (a client that gives up raises)."""
    if path == "/v1/keys/verify":
        request = urllib.request.Request(  # noqa: S310 - our own loopback server
            base + path, data=json.dumps({"key": key}).encode(), headers={"Content-Type": "application/json"}
        )
    else:
        request = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {key}"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


@pytest.mark.parametrize(("worker_class", "deadline"), [("gevent", DEADLINE), ("gthread", THREAD_DEADLINE)])
def test_gunicorn_answers_every_call_503_within_the_deadline(hung, tmp_path, worker_class, deadline):
    """The shipped server (two gevent workers; gthread too): the verification API and a ``@require_api_key``
    route. Every call made while the database is frozen is answered 503 with Retry-After and the JSON error within
    the deadline (+1 s: the client gives up after that), while the database stays frozen; the next call after the
    thaw is 200."""
    # A gthread worker's request that waits for a free thread is not in the verification engine yet: enough
    # threads that none waits, so the test sees the engine's deadline alone.
    settings = {"API_VERIFY_DEADLINE": str(deadline), "GUNICORN_WORKER_CLASS": worker_class, "GUNICORN_THREADS": "16"}
    with gunicorn(hung.url, tmp_path, **settings) as base:
        for path in ("/v1/keys/verify", "/v1/whoami") * 4:  # both workers connected to the database
            assert call(base, path, hung.key, timeout=30)[0] == 200
        paths = ["/v1/keys/verify", "/v1/whoami"] * (CALLS // 2)
        with hung.cluster.frozen_for_a_while(), ThreadPoolExecutor(CALLS) as pool:
            answers = list(pool.map(lambda path: call(base, path, hung.key, timeout=deadline + SLACK), paths))
            lone = call(base, "/v1/keys/verify", hung.key, timeout=deadline + SLACK)
        for status, headers, body in [*answers, lone]:
            assert status == 503
            assert headers["Retry-After"] == "1"
            assert body["error"]["code"] == "unavailable"
        assert call(base, "/v1/keys/verify", hung.key, timeout=10)[0] == 200
        assert call(base, "/v1/whoami", hung.key, timeout=10)[0] == 200


def test_a_deadline_that_is_not_a_number_of_seconds_stops_the_server_in_one_line(database_url):
    settings = {**os.environ, **SECRETS, "DATABASE_URL": database_url, "API_VERIFY_DEADLINE": "soon"}
    result = subprocess.run(  # noqa: S603 - our own server, run with this interpreter
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--bind", "127.0.0.1:0", "wsgi:app"],
        cwd=ROOT,
        env=settings,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: API_VERIFY_DEADLINE must be a positive number of seconds, not 'soon'"
    )
