FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml ./
COPY portal ./portal
RUN pip install --no-cache-dir .
COPY . .
RUN useradd --system portal && chown -R portal /app
USER portal
EXPOSE 8000
CMD ["gunicorn", "--config", "gunicorn.conf.py", "wsgi:app"]
