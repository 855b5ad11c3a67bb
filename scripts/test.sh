#!/usr/bin/env bash
# Sets up .venv from scratch if needed, then runs the whole test suite on the TensorFlow
# backend and the backend-agnostic core tests (marker `core`) on the JAX and PyTorch backends.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[tensorflow-cpu,jax,dev,hub]"
# PyTorch pinned to the CPU build the CI machines carry: an unpinned `torch` pulls the
# multi-GB CUDA build.
.venv/bin/python -m pip install --quiet torch==2.13.0
echo "== ruff"
.venv/bin/ruff check src tests benchmarks
echo "== TensorFlow backend: all tests"
KERAS_BACKEND=tensorflow .venv/bin/python -m pytest -q "$@"
echo "== JAX backend: core tests"
KERAS_BACKEND=jax .venv/bin/python -m pytest -q -m core "$@"
echo "== PyTorch backend: core tests"
# The README/demo command runs and the numpy threshold selection of test_scale do the same
# work on every backend; they run above, which keeps the whole script within CI's time limit.
KERAS_BACKEND=torch .venv/bin/python -m pytest -q -m core --ignore=tests/test_readme_commands.py \
  --ignore=tests/test_demo.py --ignore=tests/test_scale.py "$@"
