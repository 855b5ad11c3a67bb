#!/usr/bin/env bash
# Sets up .venv from scratch if needed, then runs the main job: `keras-prune demo`
# (train a small MNIST model on data shipped with the package, prune it, report).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[tensorflow-cpu]"
.venv/bin/keras-prune demo "$@"
