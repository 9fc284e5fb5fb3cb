#!/usr/bin/env bash
# The one command to see vai-sidecar work, from a fresh clone: `vai-sidecar demo` (embedded Redis,
# the sidecar, an attribution worker, the digits CNN and replayed traffic with a drift phase).
# Usage: scripts/run.sh [--port 8000] [--duration SECONDS]
# For production, run `vai-sidecar serve` and `vai-sidecar worker` instead (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/vai-sidecar demo "$@"
