FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml ./
COPY portal ./portal
RUN pip install --no-cache-dir .
COPY . .
# instance/usage-spill: where a worker stopped during a database outage keeps its usage rows (a volume in
# docker-compose.yml, which takes this folder's owner).
RUN useradd --system portal && mkdir -p /app/instance/usage-spill && chown -R portal /app
USER portal
EXPOSE 8000
# Liveness: the process answers (/healthz needs no database, so an outage of PostgreSQL restarts nothing);
# docker-compose.yml checks readiness (/readyz) instead. Reads the port from GUNICORN_BIND.
HEALTHCHECK --interval=15s --timeout=6s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request as u; port = os.environ.get('GUNICORN_BIND', '0.0.0.0:8000').rsplit(':', 1)[-1]; sys.exit(u.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=5).status != 200)"]
CMD ["gunicorn", "--config", "gunicorn.conf.py", "wsgi:app"]
