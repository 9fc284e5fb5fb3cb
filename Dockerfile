# syntax=docker/dockerfile:1
# vai-sidecar image: `docker build -t vai-sidecar .`. One image for every role
# (`vai-sidecar serve | monitor | worker`); docker-compose.yml runs each as a service beside Redis,
# Prometheus, Alertmanager and Grafana.

# --- build: a virtualenv with the project and its dependencies -------------------------------
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv

# torch==2.13.0 is pinned in pyproject.toml. Installing it first, in its own layer, keeps pip
# from resolving another torch build for the other dependencies, and keeps this (largest) layer
# cached while the code changes.
RUN pip install torch==2.13.0

WORKDIR /src
COPY pyproject.toml README.md ./
COPY common ./common
COPY service ./service
COPY sampler ./sampler
COPY monitors ./monitors
COPY attribution_workers ./attribution_workers
COPY demo ./demo
RUN pip install .

# --- runtime ---------------------------------------------------------------------------------
FROM python:3.11-slim

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN useradd --system --uid 10001 --user-group --create-home --home-dir /var/lib/vai vai
# /models, owned by vai: a named volume mounted there starts with this owner, so the compose
# stack's `models` service (running as vai) can write the trained model into it.
RUN install -d -o vai -g vai /models
COPY --from=build /opt/venv /opt/venv

# Non-root. The working directory is writable: without VAI_REDIS_URL the sidecar starts an
# embedded redis-server with its data under ./.vai-data (compose always sets VAI_REDIS_URL).
USER vai
WORKDIR /var/lib/vai

# 8000: the sidecar; 8001: a worker's /metrics; 8002: a monitor's /metrics.
EXPOSE 8000 8001 8002

# No curl in the image: probe /livez (no token needed) with the standard library. The monitor
# and worker services override this with a probe of their own /metrics (docker-compose.yml).
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/livez' % os.environ.get('VAI_PORT', '8000'), timeout=2)"]

# Auth tokens MUST be set (VAI_INGEST_TOKENS, VAI_READ_TOKENS, VAI_ADMIN_TOKENS; comma-separated):
# `serve` refuses to bind a non-loopback address such as 0.0.0.0 while auth is off, and exits 2.
CMD ["vai-sidecar", "serve", "--host", "0.0.0.0"]
