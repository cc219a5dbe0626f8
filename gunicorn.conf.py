"""gunicorn settings for the portal and the /v1 verification API (``gunicorn wsgi:app`` reads this file).

gevent workers by default: each process answers all of its connections from one event loop, so a call that
waits on PostgreSQL costs a switch between greenlets instead of a hand-off between OS threads, and keep-alive
connections from gateways cost nothing while idle. The app makes psycopg2 and argon2 cooperative under gevent
(portal/green.py). ``GUNICORN_WORKER_CLASS=gthread`` (with ``GUNICORN_THREADS``) runs the same app on threads.
The ``worker_exit`` hook flushes buffered usage rows when a worker stops (spilling them to the instance folder if
the database does not take them within a few seconds; portal/verification/spill.py).

Metrics (portal/metrics.py) are kept in prometheus_client's multiprocess mode, so a scrape of ``/metrics``
answered by any worker shows all of them: each master start gets a fresh ``PROMETHEUS_MULTIPROC_DIR`` (a new
temporary directory, removed when the master exits; or the operator's own directory, emptied), set before any
worker starts, and a worker that exits is marked dead there so its gauges leave the sums.

Both are gunicorn's workers with one addition (portal/serving.py): every request must arrive, line, headers
and body, within ``GUNICORN_REQUEST_READ_TIMEOUT`` (10 s) of the moment the worker starts waiting for it, or
its connection is closed (a late body is answered 408). gunicorn's ``timeout`` does not do this: it restarts a
worker that stops answering its master, and a gevent worker otherwise waits for a body as long as the client
takes. The worker reads the body itself, whole and under that deadline, before it calls the app, so nothing in
the app (Flask's form parser, the /v1 fast path) ever waits on a slow client. That is the robust place: a
middleware reading ``wsgi.input`` would leave the wait for headers unbounded and every other reader of the
body unguarded. A gevent worker near ``worker_connections`` also closes the connection that has waited longest
for its request, so a flood of slow clients cannot keep a new one out. The gthread worker bounds bodies only
(gunicorn gives it 5 s for a request's first bytes, outside its threads).

gunicorn is not meant to face the internet on its own: docker-compose.yml puts nginx in front of it
(docs/deploy/nginx.conf: buffered requests, a body size limit, connections per client address), and
docs/operations.md explains both. docker-compose.yml runs two gunicorns with this file, one answering /v1 and one
the pages, so that a dashboard's render never holds a worker that answers verifications (docs/scaling.md).
"""

import os
import shutil
import tempfile

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
# One process per core: measured on 2 cores, 3 or 4 gevent workers did less per second than 2.
workers = int(os.environ.get("GUNICORN_WORKERS", str(max(2, os.cpu_count() or 2))))
# gunicorn's names for its workers mean ours (portal/serving.py); any other class is taken as given.
WORKER_CLASSES = {"gevent": "portal.serving.GeventWorker", "gthread": "portal.serving.ThreadWorker"}
_worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "gevent")
worker_class = WORKER_CLASSES.get(_worker_class, _worker_class)
worker_connections = int(os.environ.get("GUNICORN_WORKER_CONNECTIONS", "1000"))  # per gevent worker
threads = int(os.environ.get("GUNICORN_THREADS", "8"))  # per gthread worker
raw_env = ["PORTAL_WEB_WORKER=1"]  # no `flask db` commands (nor Alembic's memory) in web workers
# Idle keep-alive connections are closed after `keepalive` seconds. It must stay well under graceful_timeout:
# a stopping gevent worker waits for its connections, idle ones too, and the master kills it at
# graceful_timeout, before the worker_exit hook could flush the buffered usage rows.
keepalive = 5
graceful_timeout = 30


def worker_exit(server, worker):  # noqa: ARG001 - gunicorn's hook signature
    """A stopping worker writes the usage rows still buffered (its answered calls) before it goes."""
    app = getattr(worker, "wsgi", None)  # the Flask app the worker loaded
    close = getattr(getattr(app, "extensions", {}).get("portal.verifier"), "close", None)
    if close is not None:
        close()


def post_worker_init(worker):
    """Start the worker's background threads (mail sender, webhook deliverer) now rather than at its first page
    request: a worker that only answers verifications sends mail and webhooks too. Its usage writer starts now
    too, and writes the spill files that workers stopped during a database outage left."""
    extensions = getattr(getattr(worker, "wsgi", None), "extensions", {})
    for name in ("portal.mail_sender", "portal.webhook_deliverer"):
        thread = extensions.get(name)
        if thread is not None:
            thread.ensure_started()
    start = getattr(extensions.get("portal.verifier"), "start", None)
    if start is not None:
        start()


def on_starting(server):
    """Refuse --preload with gevent: the app would be built before gevent patches the process, so psycopg2
    and the usage writer would block each worker's event loop instead of yielding."""
    if server.cfg.preload_app and server.cfg.worker_class_str in ("gevent", WORKER_CLASSES["gevent"]):
        raise RuntimeError("--preload is not supported with gevent workers (see gunicorn.conf.py)")
    from portal.config import check_environment
    from portal.serving import read_timeout

    check_environment()  # a missing or weak secret stops the master with one line, before any worker starts
    try:
        read_timeout()
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    _fresh_metrics_dir()


_metrics_dirs = []  # the directory this master made for metrics, removed at exit
_MADE = "PROCODE_METRICS_DIR_MADE"  # marks a directory a master made, so a re-exec'd master (USR2) makes its own


def _fresh_metrics_dir():
    """Point this master's workers at an empty multiprocess directory (before any of them imports
    prometheus_client, which reads the variable at import): values from a previous run would be summed in."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path and path != os.environ.get(_MADE):
        os.makedirs(path, exist_ok=True)
        for name in os.listdir(path):
            if name.endswith(".db"):
                os.remove(os.path.join(path, name))
    else:
        path = tempfile.mkdtemp(prefix="procode-metrics-")
        _metrics_dirs.append(path)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.environ[_MADE] = path


def child_exit(server, worker):  # noqa: ARG001 - gunicorn's hook signature
    """In the master, after a worker exited (cleanly or not): its live gauges leave the sums."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):  # noqa: ARG001 - gunicorn's hook signature
    for path in _metrics_dirs:
        shutil.rmtree(path, ignore_errors=True)
