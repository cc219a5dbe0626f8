"""Configuration classes.

Secrets have no fallback outside development and tests: a production process without ``SECRET_KEY`` and
``API_KEY_PEPPER`` refuses to start rather than run with a guessable value.

Mail (portal/mail/): ``MAIL_URL`` says how to reach the SMTP server (``smtp://user:pass@host:587?starttls=1``,
``smtps://user:pass@host:465``, ``smtp://host:25``) and ``MAIL_FROM`` who the mail is from (required with
``MAIL_URL``). Without ``MAIL_URL`` a production process starts, logs one warning, and keeps every mail pending
in the outbox until it is set; development prints each mail to the terminal instead (``MAIL_CONSOLE``).
``PUBLIC_BASE_URL`` is the portal's address as users reach it, for the absolute links in mail. It has no
production default (a guessed host would send users elsewhere), but a process starts without it: only
rendering a mail then fails, with an error naming the setting, so the change that would send it rolls back.

Signed-in sessions (portal/account/sessions.py) are rows on the server; the cookies carry only their secret,
so sign-out, "sign out other sessions" and a password change end a session everywhere, copied cookies included.
A session ends when it has been idle for its idle timeout or reaches its absolute age, whichever comes first:

- without "Keep me signed in": ``SESSION_IDLE_TIMEOUT`` (12 hours, a working day with its breaks) and
  ``SESSION_MAX_AGE`` (7 days, so even a tab in constant use signs in again weekly);
- with it: ``REMEMBER_IDLE_TIMEOUT`` (14 days, a fortnight away) and ``REMEMBER_MAX_AGE`` (30 days).

The cookies follow the server: the session cookie lives ``PERMANENT_SESSION_LIFETIME`` = the idle timeout after
the last request, and the remember-me cookie, set once at sign-in, ``REMEMBER_COOKIE_DURATION`` =
``REMEMBER_MAX_AGE`` (``validate`` refuses a mismatch). The idle and absolute limits are checked on every
request; ``last_seen_at`` is written at most once a minute.
Two-factor sign-in (portal/twofactor/): TOTP secrets are encrypted with a key derived from ``SECRET_KEY``, so
rotating ``SECRET_KEY`` makes enrolled authenticator apps stop working (their owners sign in with a passkey or a
recovery code and enrol again). Passkeys use ``WEBAUTHN_RP_ID`` (default: the host of ``PUBLIC_BASE_URL``, else
of the request) and the origin of ``PUBLIC_BASE_URL`` (else of the request). ``STAFF_REQUIRE_TWO_FACTOR``
(on in production, off in development and tests unless set) keeps staff without two-factor out of /staff.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

MIN_SECRET_BYTES = 32


class ConfigError(RuntimeError):
    """Raised when the environment cannot produce a safe configuration."""


def seconds_setting(name: str, text: str) -> float:
    """A positive, finite number of seconds from the environment; anything else stops the process in one line."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < float("inf"):
        raise ConfigError(f"{name} must be a positive number of seconds, not {text!r}")
    return seconds


class Config:
    """Settings shared by every environment; values come from the environment."""

    ENV_NAME = "production"  # which PORTAL_ENV this class serves: `flask seed` runs only outside production

    SECRET_KEY: str | None = None
    API_KEY_PEPPER: str | None = None
    DATABASE_URL: str | None = None
    # A streaming replica of DATABASE_URL for the usage pages' reads (portal/db.py ``read``); unset, or while it
    # does not answer, they read the primary. Nothing is ever written through it (docs/scaling.md).
    DATABASE_REPLICA_URL: str | None = None
    # Per worker process. A gevent worker can have hundreds of page requests in flight, and a request beyond
    # the pool waits (cooperatively) for a connection: 10 + 20 overflow per worker, plus the verification and
    # usage-writer connections, keeps two workers at about 64 connections, under PostgreSQL's default 100.
    # hide_parameters: a statement's error (logged with its traceback) shows its SQL, never the values bound to
    # it, which can be a mail's body with a reset link, a token's hash or an address (create_app adds it to
    # engine options given without it).
    SQLALCHEMY_ENGINE_OPTIONS: dict[str, Any] = {
        "pool_pre_ping": True,
        "pool_size": 10,
        "max_overflow": 20,
        "hide_parameters": True,
    }
    # The pool mode of a connection pooler between the app and PostgreSQL (PgBouncer's pool_mode): `session`
    # (also for no pooler) sets the verification connection up once; `transaction` makes each verification one
    # query string that brings its settings and prepares its statement where missing, at a CPU cost per call
    # (portal/verification/pooling.py, docs/operations.md "Behind PgBouncer").
    DATABASE_POOL_MODE = "session"

    SESSION_COOKIE_NAME = "procode_session"
    SESSION_COOKIE_HTTPONLY = True
    SESSION_COOKIE_SAMESITE = "Lax"
    SESSION_COOKIE_SECURE = True
    REMEMBER_COOKIE_HTTPONLY = True
    REMEMBER_COOKIE_SAMESITE = "Lax"
    REMEMBER_COOKIE_SECURE = True
    # Session lifetimes: see the module docstring.
    SESSION_IDLE_TIMEOUT = timedelta(hours=12)
    SESSION_MAX_AGE = timedelta(days=7)
    REMEMBER_IDLE_TIMEOUT = timedelta(days=14)
    REMEMBER_MAX_AGE = timedelta(days=30)
    REMEMBER_COOKIE_DURATION = REMEMBER_MAX_AGE
    PERMANENT_SESSION_LIFETIME = SESSION_IDLE_TIMEOUT
    WTF_CSRF_TIME_LIMIT = None  # the token lives as long as the session that holds it
    MAX_CONTENT_LENGTH = 2 * 1024 * 1024

    # argon2id parameters (RFC 9106 second recommended option).
    ARGON2_TIME_COST = 3
    ARGON2_MEMORY_COST = 64 * 1024
    ARGON2_PARALLELISM = 4

    # Sign-in throttling: failures allowed per window, per account and per client address.
    LOGIN_MAX_FAILURES_PER_ACCOUNT = 5  # from one address
    LOGIN_MAX_FAILURES_PER_ACCOUNT_TOTAL = 50  # from all addresses together
    LOGIN_MAX_FAILURES_PER_IP = 20
    LOGIN_THROTTLE_WINDOW = timedelta(minutes=15)
    # A device that signed in before skips the account-wide bucket (portal/auth/services.py, devices.py).
    KNOWN_DEVICE_COOKIE = "procode_device"
    KNOWN_DEVICE_MAX_AGE = timedelta(days=365)
    SIGNUP_MAX_PER_IP = 5  # sign-ups per client address per SIGNUP_WINDOW
    SIGNUP_WINDOW = timedelta(hours=1)

    # Links mailed to members (portal/auth/tokens.py): single use, stored as a SHA-256.
    VERIFY_EMAIL_TTL = timedelta(hours=24)
    VERIFY_RESEND_MAX = 3  # verification mails a member may ask for per VERIFY_RESEND_WINDOW
    VERIFY_RESEND_WINDOW = timedelta(hours=1)
    CHANGE_EMAIL_TTL = timedelta(hours=24)
    PASSWORD_RESET_TTL = timedelta(hours=1)
    PASSWORD_RESET_MAX_PER_EMAIL = 5  # reset requests per address per PASSWORD_RESET_WINDOW
    PASSWORD_RESET_MAX_PER_IP = 20  # reset requests per client address per PASSWORD_RESET_WINDOW
    PASSWORD_RESET_WINDOW = timedelta(hours=1)

    # Two-factor sign-in: wrong codes allowed per account and window; how long a password-only sign-in waits.
    TWO_FACTOR_MAX_FAILURES = 5
    TWO_FACTOR_THROTTLE_WINDOW = timedelta(minutes=5)
    TWO_FACTOR_PENDING_TTL = timedelta(minutes=5)
    TWO_FACTOR_ISSUER = "ProCode"  # the account's label in authenticator apps
    WEBAUTHN_RP_ID: str | None = None
    WEBAUTHN_RP_NAME = "ProCode Portal"
    STAFF_REQUIRE_TWO_FACTOR = True

    INVITATION_TTL = timedelta(days=7)
    KEYS_PER_PAGE = 20
    # Where "upgrade" leads when an organization is at its plan's key limit: a pricing or billing page, else a
    # mail to support.
    UPGRADE_URL: str | None = None
    SUPPORT_EMAIL = "support@procode.dev"
    AUDIT_PER_PAGE = 50
    SECURITY_LOG_PER_PAGE = 50
    STAFF_PER_PAGE = 25
    PUBLIC_API_BASE = "http://127.0.0.1:5000"
    PUBLIC_BASE_URL: str | None = None  # links in mail; see the module docstring

    # Transactional mail: an outbox table, delivered by a sender thread per web process (portal/mail/).
    MAIL_URL: str | None = None
    MAIL_FROM: str | None = None
    MAIL_CONSOLE = False  # with no MAIL_URL: print each mail and mark it sent (development) or keep it pending
    MAIL_SENDER_THREAD = True  # web processes deliver mail in a background thread; else `flask mail send-pending`
    MAIL_POLL_INTERVAL = 5.0  # seconds between the sender thread's passes (a commit that enqueued mail wakes it)
    MAIL_MAX_ATTEMPTS = 10  # then the mail is marked failed and shown to staff at /staff/mail
    MAIL_RETRY_BASE = 30.0  # seconds before the first retry, doubling after each failure …
    MAIL_RETRY_CAP = 3600.0  # … up to this
    MAIL_SMTP_TIMEOUT = 20.0  # seconds per SMTP operation
    # Notifications (portal/notify/): webhooks go to public https addresses only; development and tests (and an
    # operator who knows why, with WEBHOOK_ALLOW_PRIVATE=1) may send to loopback and private receivers over http.
    WEBHOOK_ALLOW_PRIVATE = False
    # Scheduled events (portal/notify/scheduler.py): a thread per web process; one pass per interval among all
    # processes and servers. Off: run `flask notify run` from cron instead.
    NOTIFY_SCHEDULER_THREAD = True
    NOTIFY_INTERVAL = 60.0  # seconds between passes
    # Delivery (portal/notify/delivery.py): a deliverer thread per web process, like the mail sender's, else
    # `flask webhooks deliver` from cron. Each attempt has WEBHOOK_TIMEOUT seconds, connection included; up to
    # WEBHOOK_CONCURRENCY endpoints are sent to at once per process. A failed delivery is retried after a random
    # delay of up to each step of WEBHOOK_RETRY_SCHEDULE in turn (seconds; about a day in all on average), then
    # given up; an endpoint with nothing delivered over a whole schedule is disabled and its owners mailed
    # (portal/notify/delivery_results.py).
    WEBHOOK_DELIVERER_THREAD = True
    WEBHOOK_POLL_INTERVAL = 5.0  # seconds between the deliverer's passes (a commit that queued deliveries wakes it)
    WEBHOOK_TIMEOUT = 5.0
    WEBHOOK_CONCURRENCY = 10
    # Sends per second per process, at most (0: no limit): a burst of events takes a bounded share of a web
    # worker's CPU from its pages and verifications (docs/performance.md), and is delivered over a little longer.
    WEBHOOK_MAX_PER_SECOND = 30.0
    WEBHOOK_RETRY_SCHEDULE: tuple[float, ...] = (5, 60, 300, 1800, 7200, 18000, 36000, 36000, 36000, 36000)
    # Usage: raw events are pruned after this many days (flask usage prune drops whole daily partitions), rollups
    # kept far longer. The usage writers keep daily partitions this many days ahead (portal/usage/partitions.py).
    USAGE_RAW_RETENTION_DAYS = 90
    USAGE_PARTITIONS_AHEAD_DAYS = 7
    USAGE_ROLLUP_RETENTION_DAYS = 400
    USAGE_RECENT_PER_PAGE = 50

    # Key verification (portal/verification/): how often each process's usage writer flushes.
    API_USAGE_FLUSH_INTERVAL = 0.2  # seconds; a killed worker loses at most this much of its usage rows
    # Seconds from a verification's arrival to its answer (queueing, connecting and the statement together):
    # past it, a database that does not answer gives 503 with Retry-After (portal/verification/backend.py).
    API_VERIFY_DEADLINE = 5.0
    # Where a stopping worker that cannot reach the database writes its buffered usage rows, for the next worker
    # or `flask usage replay` to write (portal/verification/spill.py). Unset: <instance folder>/usage-spill;
    # empty: nowhere (the rows are lost, as the log says).
    API_USAGE_SPILL_DIR: str | None = None
    API_VERIFY_FAST_PATH = True  # answer POST /v1/keys/verify at the WSGI layer (portal/api/fastpath.py)
    # Calls answered malformed or unknown per client address and minute, per worker process, before the address
    # is answered 429 too_many_invalid_keys without a lookup (portal/verification/budget.py; 0 = no budget),
    # and how many addresses a worker counts per minute at most (its memory bound).
    API_INVALID_KEY_BUDGET = 60
    API_INVALID_KEY_ADDRESSES = 10_000
    # Gateways (docs/gateways.md): besides `Authorization: Bearer`, /v1/keys/verify/gateway reads the key from
    # this request header; empty = Authorization only.
    API_KEY_HEADER = "X-API-Key"
    # Leaked keys (portal/keys/leaks.py, docs/secret-scanning.md): POST /v1/keys/revoke per client address and
    # window, and the secret-scanning partners' public keys (JSON of key id → PEM, inline or a file's path).
    LEAK_REPORT_MAX_PER_IP = 20
    LEAK_REPORT_WINDOW = timedelta(hours=1)
    SECRET_SCANNING_PUBLIC_KEYS: str | None = None
    # Operations (docs/operations.md): request log lines as text or JSON, whether /v1 calls get one too, and the
    # bearer token that /metrics asks for (unset: /metrics answers 404 "metrics disabled").
    LOG_FORMAT = "text"
    LOG_API_REQUESTS = True
    METRICS_TOKEN: str | None = None
    # `flask db …` (Flask-Migrate, Alembic). gunicorn.conf.py turns it off in web workers, which never
    # migrate: Alembic alone is ≈ 10 MB of each worker's memory.
    MIGRATIONS_CLI = True

    @classmethod
    def from_env(cls) -> dict[str, Any]:
        """Read the settings this class leaves to the environment."""
        values: dict[str, Any] = {}
        for name in (
            "SECRET_KEY",
            "API_KEY_PEPPER",
            "DATABASE_URL",
            "DATABASE_REPLICA_URL",
            "PUBLIC_API_BASE",
            "PUBLIC_BASE_URL",
            "MAIL_URL",
            "MAIL_FROM",
            "WEBAUTHN_RP_ID",
            "SECRET_SCANNING_PUBLIC_KEYS",
            "UPGRADE_URL",
            "SUPPORT_EMAIL",
            "METRICS_TOKEN",
        ):
            if os.environ.get(name):
                values[name] = os.environ[name]
        if "API_KEY_HEADER" in os.environ:  # set but empty turns the header off
            values["API_KEY_HEADER"] = os.environ["API_KEY_HEADER"].strip()
        if os.environ.get("MAIL_SENDER_THREAD"):
            values["MAIL_SENDER_THREAD"] = os.environ["MAIL_SENDER_THREAD"] not in ("0", "false", "no")
        if os.environ.get("COOKIE_SECURE", "").lower() in ("0", "false", "no"):
            # Only for a plain-http deployment on a trusted network (e.g. docker compose on localhost).
            values["SESSION_COOKIE_SECURE"] = values["REMEMBER_COOKIE_SECURE"] = False
        if os.environ.get("DATABASE_POOL_MODE"):
            values["DATABASE_POOL_MODE"] = os.environ["DATABASE_POOL_MODE"].strip().lower()
        if os.environ.get("API_VERIFY_FAST_PATH"):
            values["API_VERIFY_FAST_PATH"] = os.environ["API_VERIFY_FAST_PATH"] not in ("0", "false", "no")
        if os.environ.get("API_USAGE_FLUSH_INTERVAL"):
            values["API_USAGE_FLUSH_INTERVAL"] = float(os.environ["API_USAGE_FLUSH_INTERVAL"])
        if os.environ.get("API_VERIFY_DEADLINE"):
            values["API_VERIFY_DEADLINE"] = seconds_setting("API_VERIFY_DEADLINE", os.environ["API_VERIFY_DEADLINE"])
        if "API_USAGE_SPILL_DIR" in os.environ:  # set but empty turns spilling off
            values["API_USAGE_SPILL_DIR"] = os.environ["API_USAGE_SPILL_DIR"].strip()
        if os.environ.get("API_INVALID_KEY_BUDGET"):
            values["API_INVALID_KEY_BUDGET"] = int(os.environ["API_INVALID_KEY_BUDGET"])
        if os.environ.get("STAFF_REQUIRE_TWO_FACTOR"):
            values["STAFF_REQUIRE_TWO_FACTOR"] = os.environ["STAFF_REQUIRE_TWO_FACTOR"] not in ("0", "false", "no")
        if os.environ.get("SIGNUP_MAX_PER_IP"):
            values["SIGNUP_MAX_PER_IP"] = int(os.environ["SIGNUP_MAX_PER_IP"])
        if os.environ.get("NOTIFY_SCHEDULER_THREAD"):
            values["NOTIFY_SCHEDULER_THREAD"] = os.environ["NOTIFY_SCHEDULER_THREAD"] not in ("0", "false", "no")
        if os.environ.get("NOTIFY_INTERVAL"):
            values["NOTIFY_INTERVAL"] = float(os.environ["NOTIFY_INTERVAL"])
        if os.environ.get("WEBHOOK_ALLOW_PRIVATE"):
            values["WEBHOOK_ALLOW_PRIVATE"] = os.environ["WEBHOOK_ALLOW_PRIVATE"] not in ("0", "false", "no")
        if os.environ.get("LOG_FORMAT"):
            values["LOG_FORMAT"] = os.environ["LOG_FORMAT"].strip().lower()
        if os.environ.get("LOG_API_REQUESTS"):
            values["LOG_API_REQUESTS"] = os.environ["LOG_API_REQUESTS"] not in ("0", "false", "no")
        if os.environ.get("WEBHOOK_DELIVERER_THREAD"):
            values["WEBHOOK_DELIVERER_THREAD"] = os.environ["WEBHOOK_DELIVERER_THREAD"] not in ("0", "false", "no")
        for name in ("WEBHOOK_TIMEOUT", "WEBHOOK_POLL_INTERVAL", "WEBHOOK_MAX_PER_SECOND"):
            if os.environ.get(name):
                values[name] = float(os.environ[name])
        if os.environ.get("WEBHOOK_CONCURRENCY"):
            values["WEBHOOK_CONCURRENCY"] = int(os.environ["WEBHOOK_CONCURRENCY"])
        if os.environ.get("WEBHOOK_RETRY_SCHEDULE"):  # seconds, comma-separated: "5,60,300,1800"
            values["WEBHOOK_RETRY_SCHEDULE"] = tuple(float(s) for s in os.environ["WEBHOOK_RETRY_SCHEDULE"].split(","))
        if os.environ.get("PORTAL_WEB_WORKER"):
            values["MIGRATIONS_CLI"] = False
        return values

    @classmethod
    def validate(cls, config: dict[str, Any]) -> None:
        missing = [name for name in ("SECRET_KEY", "API_KEY_PEPPER") if not config.get(name)]
        if missing:
            raise ConfigError(
                f"{' and '.join(missing)} must be set in the environment for production "
                "(see .env.example); refusing to start with a guessable secret."
            )
        if config.get("REMEMBER_COOKIE_DURATION") != config.get("REMEMBER_MAX_AGE"):
            raise ConfigError("REMEMBER_COOKIE_DURATION must equal REMEMBER_MAX_AGE (see portal/config.py).")
        if config.get("ENV_NAME", "production") == "production":
            secrets = ("SECRET_KEY", "API_KEY_PEPPER", *(("METRICS_TOKEN",) if config.get("METRICS_TOKEN") else ()))
            short = [name for name in secrets if len(str(config[name]).encode()) < MIN_SECRET_BYTES]
            if short:
                raise ConfigError(
                    f"{' and '.join(short)} must be at least {MIN_SECRET_BYTES} bytes in production "
                    '(generate one with: python -c "import secrets; print(secrets.token_urlsafe(48))").'
                )
        header = config.get("API_KEY_HEADER") or ""
        if header and (
            not header.replace("-", "").isalnum() or not header.isascii() or header.lower() == "authorization"
        ):
            raise ConfigError("API_KEY_HEADER must be a header name such as X-API-Key (letters, digits and '-').")
        if config.get("DATABASE_POOL_MODE", "session") not in ("session", "transaction"):
            raise ConfigError(
                f"DATABASE_POOL_MODE must be session or transaction (got {config.get('DATABASE_POOL_MODE')!r})."
            )
        if config.get("LOG_FORMAT", "text") not in ("text", "json"):
            raise ConfigError(f"LOG_FORMAT must be text or json (got {config.get('LOG_FORMAT')!r}).")
        if config.get("MAIL_URL") and not config.get("MAIL_FROM"):
            raise ConfigError("MAIL_FROM must be set with MAIL_URL (e.g. 'ProCode <no-reply@example.com>').")
        if float(config.get("NOTIFY_INTERVAL", 60)) < 1:
            raise ConfigError("NOTIFY_INTERVAL must be at least 1 (seconds between scheduled-event passes).")


class DevConfig(Config):
    """Local development: reads .env, allows http cookies, fixed throwaway secrets."""

    ENV_NAME = "development"

    SESSION_COOKIE_SECURE = False
    REMEMBER_COOKIE_SECURE = False
    PUBLIC_BASE_URL = "http://127.0.0.1:5000"
    MAIL_FROM = "ProCode Portal <no-reply@procode.dev>"
    MAIL_CONSOLE = True
    STAFF_REQUIRE_TWO_FACTOR = False
    WEBHOOK_ALLOW_PRIVATE = True  # a receiver on this machine

    @classmethod
    def from_env(cls) -> dict[str, Any]:
        from dotenv import load_dotenv

        load_dotenv()
        values = super().from_env()
        # Development-only values, never used by the production config.
        values.setdefault("SECRET_KEY", "development-only-secret-key")
        values.setdefault("API_KEY_PEPPER", "development-only-key-pepper")
        return values


class TestConfig(Config):
    """Tests: cheap password hashing, CSRF off except where a test turns it on."""

    ENV_NAME = "testing"

    TESTING = True
    WTF_CSRF_ENABLED = False
    SESSION_COOKIE_SECURE = False
    REMEMBER_COOKIE_SECURE = False
    ARGON2_TIME_COST = 1
    ARGON2_MEMORY_COST = 1024
    ARGON2_PARALLELISM = 1
    PUBLIC_BASE_URL = "http://127.0.0.1:5000"
    MAIL_FROM = "ProCode Portal <no-reply@procode.dev>"
    MAIL_SENDER_THREAD = False  # tests call portal.mail.send_due() themselves
    NOTIFY_SCHEDULER_THREAD = False  # tests call portal.notify.scheduler.run_once() themselves
    STAFF_REQUIRE_TWO_FACTOR = False  # tests that need it turn it on
    WEBHOOK_ALLOW_PRIVATE = True  # receivers run on loopback; tests of the refusal turn it off
    WEBHOOK_DELIVERER_THREAD = False  # tests call portal.notify.delivery.deliver_due() themselves
    WEBHOOK_MAX_PER_SECOND = 0.0  # unpaced: tests wait on no clock
    API_USAGE_SPILL_DIR = ""  # no spill files from tests' processes; tests of spilling name their own folder

    @classmethod
    def from_env(cls) -> dict[str, Any]:
        values = super().from_env()
        values["SECRET_KEY"] = "test-secret-key"  # noqa: S105 - tests only
        values["API_KEY_PEPPER"] = "test-key-pepper-of-at-least-32-bytes"
        return values


CONFIGS: dict[str, type[Config]] = {
    "production": Config,
    "development": DevConfig,
    "testing": TestConfig,
}


def config_for(env: str) -> type[Config]:
    """The config class for ``PORTAL_ENV``; an unknown name is a configuration error, not a KeyError."""
    try:
        return CONFIGS[env]
    except KeyError:
        raise ConfigError(f"PORTAL_ENV must be one of {', '.join(CONFIGS)} (got {env!r}).") from None


def check_environment() -> None:
    """Validate the environment's configuration without building the app (gunicorn's master, before forking):
    a problem is one line on stderr and exit status 1."""
    try:
        config_class = config_for(os.environ.get("PORTAL_ENV") or "production")
        values = {name: getattr(config_class, name) for name in dir(config_class) if name.isupper()}
        values.update(config_class.from_env())
        config_class.validate(values)
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from None
