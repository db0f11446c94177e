#!/usr/bin/env bash
# Set up (scripts/bootstrap.sh) and run the whole test suite.
# PostgreSQL on 127.0.0.1:5432 is used when reachable; with CI=true it must be.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
# The real-vLLM tests (tests/vllm) need vLLM's CPU build in its own
# environment, built once per machine outside the checkout (a few minutes the
# first time, a no-op after). A build failure stops here and names the step.
# SPECKIT_SKIP_VLLM=1 skips the build and those tests; CI never sets it.
if [ "${SPECKIT_SKIP_VLLM:-}" != "1" ]; then
  bash scripts/vllm_env.sh build
fi
exec .venv/bin/python -m pytest "$@"
