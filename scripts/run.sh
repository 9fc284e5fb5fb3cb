#!/usr/bin/env bash
# The one command to run the sidecar from a fresh clone (embedded Redis unless VAI_REDIS_URL is set).
# Usage: scripts/run.sh [serve options, e.g. --port 8000]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/vai-sidecar serve "$@"
