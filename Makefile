# ProCode Portal — every target installs what it needs first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 5000
SERVE_PORT ?= 8000
export FLASK_APP := wsgi

.PHONY: install install-dev chromium gateways pgbouncer dev serve seed test test-fast lint db-upgrade db-stop bench-verify bench-usage bench-keys bench-notify bench-mixed bench-verify-cpu faults clean

## What serving needs (make dev, serve, the CLI); the test and lint tools come with install-dev.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

## The checkout's git-ignored .env (development settings, generated secrets): the flask CLI reads it.
.env: | $(VENV)/.installed
	$(BIN)/python -m portal.devenv .env

## make dev: database (embedded unless DATABASE_URL is set), migrations, demo data, then serve on :5000
dev: seed
	@echo ""
	@echo "  ProCode Portal: http://$(HOST):$(PORT)/  (sign in with the demo login printed above)"
	@echo ""
	PORTAL_ENV=development $(BIN)/flask run --host $(HOST) --port $(PORT)

db-upgrade: install .env
	PORTAL_ENV=development $(BIN)/flask db upgrade

## make seed: the demo organization, logins and test key in the development database (idempotent)
seed: db-upgrade
	PORTAL_ENV=development $(BIN)/flask seed

## make serve: the development database served by gunicorn with the shipped gunicorn.conf.py (gevent workers),
## as a deployment serves it, on http://$(HOST):$(SERVE_PORT)
serve: db-upgrade
	PORTAL_ENV=development GUNICORN_BIND=$(HOST):$(SERVE_PORT) $(BIN)/gunicorn --config gunicorn.conf.py wsgi:app

## Debian's Chromium for the browser tests (installed when missing and we are root; else they are skipped)
chromium:
	@test -x /usr/bin/chromium || { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else echo "chromium missing and not root: browser tests will be skipped"; fi; }

## Debian's nginx (auth_request) and Caddy (forward_auth) for tests/test_gateways.py (docs/gateways.md), and
## nginx for tests/test_slow_clients.py (docs/deploy/nginx.conf); installed when missing and we are root, else
## those tests are skipped
gateways:
	@{ command -v nginx || test -x /usr/sbin/nginx; } >/dev/null && command -v caddy >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    nginx-light caddy >/dev/null; \
	else echo "nginx or caddy missing and not root: gateway tests will be skipped"; fi; }

## Debian's PgBouncer for tests/test_pgbouncer.py (docs/operations.md, "Behind PgBouncer"); installed when missing
## and we are root, else those tests are skipped
pgbouncer:
	@{ command -v pgbouncer || test -x /usr/sbin/pgbouncer; } >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    pgbouncer >/dev/null; \
	else echo "pgbouncer missing and not root: PgBouncer tests will be skipped"; fi; }

## make test: a fresh, migrated PostgreSQL database (embedded unless TEST_DATABASE_URL is set)
test: install-dev chromium gateways pgbouncer
	$(BIN)/pytest $(PYTEST_ARGS)

## make test-fast: the suite without the browser tests, stopping at the first failure
test-fast: install-dev
	$(BIN)/pytest -x -m "not browser" $(PYTEST_ARGS)

LINT_PATHS := portal tests bench migrations docs wsgi.py gunicorn.conf.py

## make lint: ruff (rules and formatting) and mypy, as CI and the pre-commit hook run them
lint: install-dev
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy

## Benchmarks (docs/performance.md): each creates a throw-away database on BENCH_DATABASE_URL's server
## (default postgresql://postgres@127.0.0.1:5432/postgres). Not part of `make test`.

## make bench-verify: the key-verification benchmark (gunicorn, wrk, pgbench); ~4 minutes.
## BENCH_ARGS="--seconds 10 --workers 2 --connections 32" to tune.
bench-verify: install
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	command -v pgbench >/dev/null || (apt-get update -qq && apt-get install -y -qq postgresql-client)
	$(BIN)/python bench/verify.py $(BENCH_ARGS)

## make bench-verify-cpu: the worker's instructions per verification, counted by valgrind (deterministic, unlike
## CPU seconds on a shared machine); ~3 minutes. BENCH_ARGS="--baseline ../main-before" compares with another
## checkout and fails above 1.10 times its count.
bench-verify-cpu: install
	command -v valgrind >/dev/null || (apt-get update -qq && apt-get install -y -qq valgrind)
	$(BIN)/python bench/verify_cpu.py $(BENCH_ARGS)

## Stop the embedded development server (its data stays under instance/pgdata).
db-stop: install
	$(BIN)/python -m portal.db stop

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info

## make bench-usage: 10M usage events, dashboard and key page against a raw GROUP BY.
## BENCH_ARGS="--events 1000000 --requests 30" for a quicker run; BENCH_ARGS="--scale" for 100M events over
## 10,000 keys in 1,000 organizations and 90 days (needs about 41 GB free on the PostgreSQL server's disk).
bench-usage: install
	$(BIN)/python bench/usage.py $(BENCH_ARGS)

## make bench-keys: 10,000 keys in one organization: the key list, a deep page, searches and filters (p50/p95),
## against the same views with 100 keys. BENCH_ARGS="--requests 50 --explain" for a quicker run with query plans.
bench-keys: install
	$(BIN)/python bench/keys.py $(BENCH_ARGS)

## make bench-notify: 1,000 events fanned out to 10 webhook endpoints on loopback (one hanging) through gunicorn's
## deliverer threads, while wrk drives verifications; interleaved with the same load without webhooks.
## BENCH_ARGS="--rounds 1 --seconds 8" for a quicker run.
bench-notify: install
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python bench/notify.py $(BENCH_ARGS)

## make bench-mixed: verifications at a fixed half load, alone and while 10 signed-in clients load the usage
## dashboards of a 10M-event organization, on one gunicorn, with /v1 on its own, and with the pages on a streaming
## replica (docs/scaling.md); interleaved. BENCH_ARGS="--events 1000000 --rounds 2 --seconds 10" for a quicker run.
bench-mixed: install
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python bench/mixed.py $(BENCH_ARGS)

## make faults: the fault matrix (docs/operations.md, "Fault matrix"): a private PostgreSQL cluster it starts and
## breaks (restarts, a crash, a 20 s stop, a 15 s freeze), a worker SIGKILLed, the master SIGTERMed with the
## database up and down, 2,000 idle, slow-body (gunicorn alone, and through docs/deploy/nginx.conf) and malformed
## connections, under 32 traced clients; PASS/FAIL per scenario; ~6 minutes. BENCH_ARGS="--quick" (~4 minutes),
## "--only pg-frozen", "--list".
faults: install gateways
	$(BIN)/python bench/faults.py $(BENCH_ARGS)
