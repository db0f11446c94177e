#!/usr/bin/env bash
# Set up (scripts/bootstrap.sh) and run the whole test suite.
# PostgreSQL on 127.0.0.1:5432 is used when reachable; with CI=true it must be.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m pytest "$@"
