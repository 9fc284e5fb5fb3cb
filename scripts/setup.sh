#!/usr/bin/env bash
# Set up everything from a fresh clone: a virtualenv with the project and its test tools,
# and (for the tests, when run as root with apt) Prometheus, promtool and Chromium.
# Idempotent and quick when nothing changed. Usage: scripts/setup.sh [--with-test-tools]
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.vai-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ client/pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing torch 2.13.0 and the project into .venv (about 2 minutes the first time)..." >&2
  # torch==2.13.0 is pinned in pyproject.toml: installing it first keeps pip from
  # resolving a newer build (with several GB of CUDA packages) for other dependencies.
  .venv/bin/pip install --quiet --disable-pip-version-check "torch==2.13.0"
  .venv/bin/pip install --quiet --disable-pip-version-check -e '.[dev]'
  # The client for serving stacks is its own distribution (no dependencies); the tests use it.
  .venv/bin/pip install --quiet --disable-pip-version-check --no-deps -e client
  touch "$stamp"
fi

if [ "${1:-}" = "--with-test-tools" ]; then
  missing=()
  command -v promtool >/dev/null || missing+=(prometheus)
  command -v chromium >/dev/null || missing+=(chromium)
  command -v amtool >/dev/null || missing+=(prometheus-alertmanager)
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "setup: installing ${missing[*]} (Debian packages) for the Prometheus and browser tests..." >&2
      apt-get update -qq >/dev/null
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
      echo "note: install ${missing[*]} (Debian packages) for the Prometheus tests" >&2
    fi
  fi
fi
