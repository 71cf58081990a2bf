#!/usr/bin/env bash
# The GPU check (tools/gpu_check.py): one GPU, no network, under 8 minutes; writes
# benchmarks/gpu_check.md (or --out). Extra arguments go to gpu_check.py.
#   bash tools/gpu_check.sh
#   bash tools/gpu_check.sh --checks op_bench train_step
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
# Triton compiles the kernel for the GPU: never the interpreter here.
unset TRITON_INTERPRET
exec timeout 470 "$PY" tools/gpu_check.py "$@"
