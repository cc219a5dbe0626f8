"""gunicorn settings for the portal and the /v1 verification API (``gunicorn wsgi:app`` reads this file).

gevent workers by default: each process answers all of its connections from one event loop, so a call that
waits on PostgreSQL costs a switch between greenlets instead of a hand-off between OS threads, and keep-alive
connections from gateways cost nothing while idle. The app makes psycopg2 and argon2 cooperative under gevent
(portal/green.py). ``GUNICORN_WORKER_CLASS=gthread`` (with ``GUNICORN_THREADS``) runs the same app on threads.
The ``worker_exit`` hook flushes buffered usage rows when a worker stops.
"""

import os

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
# One process per core: measured on 2 cores, 3 or 4 gevent workers did less per second than 2.
workers = int(os.environ.get("GUNICORN_WORKERS", str(max(2, os.cpu_count() or 2))))
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "gevent")
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
    request: a worker that only answers verifications sends mail and webhooks too."""
    extensions = getattr(getattr(worker, "wsgi", None), "extensions", {})
    for name in ("portal.mail_sender", "portal.webhook_deliverer"):
        thread = extensions.get(name)
        if thread is not None:
            thread.ensure_started()


def on_starting(server):
    """Refuse --preload with gevent: the app would be built before gevent patches the process, so psycopg2
    and the usage writer would block each worker's event loop instead of yielding."""
    if server.cfg.preload_app and server.cfg.worker_class_str == "gevent":
        raise RuntimeError("--preload is not supported with gevent workers (see gunicorn.conf.py)")
    from portal.config import check_environment

    check_environment()  # a missing or weak secret stops the master with one line, before any worker starts
