#!/usr/bin/env bash
# The one command to run the whole test suite from a fresh clone. Usage: scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --with-test-tools
exec .venv/bin/python -m pytest "$@"
