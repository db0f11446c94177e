#!/usr/bin/env bash
# The lint and type gate (configuration in pyproject.toml): ruff's lint rules,
# ruff's formatting, and mypy --strict on services/ and clients/ (the
# generated speckit_reflex.v1 stubs excluded). Sets up .venv first
# (scripts/bootstrap.sh). Runs all three, then fails naming each check that
# failed and how to fix or rerun it. .ci/run runs it before the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh

failed=()
echo "lint: ruff check ." >&2
.venv/bin/ruff check . ||
  failed+=("ruff check .          lint findings above; '.venv/bin/ruff check --fix .' fixes the safe ones")
echo "lint: ruff format --check ." >&2
.venv/bin/ruff format --check . ||
  failed+=("ruff format --check . files above are not formatted; run '.venv/bin/ruff format .'")
echo "lint: mypy (strict: services/ and clients/)" >&2
.venv/bin/mypy ||
  failed+=("mypy                  type errors above; rerun with '.venv/bin/mypy'")

if ((${#failed[@]})); then
  echo >&2
  echo "lint: FAILED (${#failed[@]} of 3 checks):" >&2
  printf '  - %s\n' "${failed[@]}" >&2
  exit 1
fi
echo "lint: passed (ruff check, ruff format --check, mypy)" >&2
