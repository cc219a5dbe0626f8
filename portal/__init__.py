"""ProCode Portal: the self-service API-key portal and the key service behind it."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from flask import Flask, abort, g, request
from flask_login import current_user
from werkzeug.middleware.proxy_fix import ProxyFix

from portal.config import config_for
from portal.logs import configure_logging
from portal.security_headers import (
    CONTENT_SECURITY_POLICY,
    NO_STORE_MIMETYPES,
    REQUEST_ID_HEADER,
    SECURITY_HEADERS,
    STRICT_TRANSPORT_SECURITY,
    request_id,
)

log = logging.getLogger("portal")


def create_app_or_exit() -> Flask:
    """:func:`create_app` for servers and the CLI: a configuration problem is one line and exit status 1."""
    from portal.config import ConfigError

    try:
        return create_app()
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from None


def create_app(config: dict[str, Any] | None = None, env: str | None = None) -> Flask:
    """Build the app. ``env`` picks the config class (``PORTAL_ENV``, default production)."""
    app = Flask(__name__, template_folder="../templates", static_folder="../static", instance_relative_config=True)
    config_class = config_for(env or os.environ.get("PORTAL_ENV") or "production")
    app.config.from_object(config_class)
    app.config.update(config_class.from_env())
    app.config.update(config or {})
    config_class.validate(app.config)

    configure_logging(app)
    configure_database(app)
    register_staff_guard(app)
    register_body_check(app)
    register_extensions(app)
    register_mail(app)
    register_notify(app)
    register_webhooks(app)
    register_blueprints(app)
    register_error_handlers(app)
    register_request_hooks(app)
    register_operations(app)
    register_template_helpers(app)
    register_commands(app)
    if os.environ.get("PORTAL_TRUST_PROXY"):
        trust_proxy(app)  # last: outside the verification fast path too, which reads the client address
    return app


def trust_proxy(app: Flask) -> None:
    """Read the client address and scheme from one reverse proxy's headers; a forwarded address that is not an
    IP address is ignored (portal/proxy.py), so it never reaches the throttles or the audit trail."""
    from portal.proxy import TRUSTED_HOPS, ValidForwardedFor

    app.config["PORTAL_TRUST_PROXY"] = True  # the verification fast path runs outside ProxyFix and reads it
    app.wsgi_app = ValidForwardedFor(ProxyFix(app.wsgi_app, x_for=TRUSTED_HOPS, x_proto=1))  # type: ignore[method-assign]


def configure_database(app: Flask) -> None:
    from portal.db import (
        check_connection,
        migration_revisions,
        migrations_head,
        replica_binds,
        resolve_database_url,
        schema_warning,
    )

    url = resolve_database_url(app.config, app.instance_path)
    app.config["SQLALCHEMY_DATABASE_URI"] = url
    # Engine options given to create_app (a test's, an embedding's) still hide bound values from errors and logs.
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {"hide_parameters": True, **app.config["SQLALCHEMY_ENGINE_OPTIONS"]}
    app.config["SQLALCHEMY_BINDS"] = {**app.config.get("SQLALCHEMY_BINDS", {}), **replica_binds(app.config)}
    if not app.testing:
        revisions = migration_revisions()
        warning = schema_warning(check_connection(url), migrations_head(revisions), revisions)
        app.config["SCHEMA_WARNING"] = warning
        if warning:
            log.warning(warning)


def register_staff_guard(app: Flask) -> None:
    """Registered before CSRF protection, so a non-staff POST to /staff gets 404, not a CSRF error that would
    reveal the area exists."""
    from portal.staff import hide_from_non_staff

    app.before_request(hide_from_non_staff)


def register_body_check(app: Flask) -> None:
    """Registered before CSRF protection too: a body that is not a form is refused (415) before anything reads it."""
    from portal.http import refuse_non_form_bodies

    app.before_request(refuse_non_form_bodies)


def register_extensions(app: Flask) -> None:
    from portal import green
    from portal.extensions import csrf, db, login_manager

    green.init_psycopg2()  # under a gevent worker: queries yield instead of blocking the worker
    db.init_app(app)
    if app.config["MIGRATIONS_CLI"]:
        from flask_migrate import Migrate  # imports Alembic: only where `flask db` can run

        Migrate(app, db, directory=os.path.join(os.path.dirname(__file__), "..", "migrations"))
    csrf.init_app(app)
    login_manager.init_app(app)
    login_manager.login_view = "auth.login"
    login_manager.login_message_category = "info"
    login_manager.session_protection = "basic"

    from portal.account.sessions import load_user

    login_manager.user_loader(load_user)


def register_mail(app: Flask) -> None:
    from portal import mail

    mail.init_app(app)


def register_notify(app: Flask) -> None:
    from portal.notify import scheduler_thread

    scheduler_thread.init_app(app)


def register_webhooks(app: Flask) -> None:
    from portal.notify import worker

    worker.init_app(app)


def register_blueprints(app: Flask) -> None:
    from portal import api
    from portal.account import bp as account_bp
    from portal.auth import bp as auth_bp
    from portal.docs import bp as docs_bp
    from portal.keys import bp as keys_bp
    from portal.notify import bp as notify_bp
    from portal.orgs import bp as orgs_bp
    from portal.staff import bp as staff_bp
    from portal.twofactor import bp as twofactor_bp
    from portal.usage import bp as usage_bp

    app.register_blueprint(auth_bp)
    app.register_blueprint(account_bp, url_prefix="/account")
    app.register_blueprint(orgs_bp)
    app.register_blueprint(keys_bp, url_prefix="/orgs/<slug>/keys")
    app.register_blueprint(staff_bp, url_prefix="/staff")
    app.register_blueprint(usage_bp)
    app.register_blueprint(notify_bp)
    app.register_blueprint(docs_bp, url_prefix="/docs")
    app.register_blueprint(twofactor_bp)  # /login/two-factor, /account/two-factor, an org settings form
    api.init_app(app)  # /v1: CSRF-exempt, with the verifier and its usage writer


def register_error_handlers(app: Flask) -> None:
    from portal.errors import register

    register(app)


def register_request_hooks(app: Flask) -> None:
    @app.before_request
    def start_request() -> None:
        g.request_id = request_id(request.headers.get(REQUEST_ID_HEADER))
        g.request_started = time.perf_counter()
        # PostgreSQL text cannot hold NUL; refuse it once here instead of failing in some query later.
        values = [request.path, *(v for vs in request.args.listvalues() for v in vs)]
        if request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
            values.extend(v for vs in request.form.listvalues() for v in vs)
        if any("\x00" in v for v in values):
            abort(400, "Requests may not contain NUL characters.")

    @app.after_request
    def harden_response(response: Any) -> Any:
        response.headers.setdefault(REQUEST_ID_HEADER, g.get("request_id", ""))
        for name, value in SECURITY_HEADERS:
            response.headers.setdefault(name, value)
        if response.mimetype == "text/html":
            response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        if app.config["SESSION_COOKIE_SECURE"]:
            response.headers.setdefault("Strict-Transport-Security", STRICT_TRANSPORT_SECURITY)
        # During an outage (portal/errors.py) reading current_user would query the database again.
        signed_in = request.endpoint != "static" and not g.get("database_unavailable") and current_user.is_authenticated
        if signed_in or (not app.debug and response.mimetype in NO_STORE_MIMETYPES):
            response.headers.setdefault("Cache-Control", "no-store")
        return response


def register_operations(app: Flask) -> None:
    """/healthz, /readyz, /metrics, and each request's log line and latency (docs/operations.md)."""
    from portal import ops

    ops.init_app(app)


def register_template_helpers(app: Flask) -> None:
    from portal.templating import register

    register(app)


def register_commands(app: Flask) -> None:
    from portal.cli import register

    register(app)
