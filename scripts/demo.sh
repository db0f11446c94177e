#!/usr/bin/env bash
# The main job on a fresh clone: set up .venv (idempotent), then `speckit demo`:
# start the embedded model server and the four services, fix a shipped broken
# crate with the reflex loop, run a short bakeoff, print the outcome and where
# the report is, and stop everything. Arguments go to `speckit demo`
# (e.g. --limit 5, --json).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/speckit demo "$@"
