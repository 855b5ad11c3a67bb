#!/usr/bin/env bash
# Sets up .venv from scratch if needed, then runs the whole test suite on the TensorFlow
# backend and the backend-agnostic core tests (marker `core`) on the JAX backend.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[tensorflow-cpu,jax,dev,hub]"
echo "== ruff"
.venv/bin/ruff check src tests benchmarks
echo "== TensorFlow backend: all tests"
KERAS_BACKEND=tensorflow .venv/bin/python -m pytest -q "$@"
echo "== JAX backend: core tests"
KERAS_BACKEND=jax .venv/bin/python -m pytest -q -m core "$@"
