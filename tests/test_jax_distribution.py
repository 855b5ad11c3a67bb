"""Gradual pruning under Keras' distribution API on JAX: DataParallel and ModelParallel over two
forced host devices, and DataParallel over two processes on localhost.

The scenarios (tests/jax_distribution_scenarios.py) run in fresh processes with
``KERAS_BACKEND=jax``, whatever backend runs this file, because devices and the
multi-process runtime are fixed when JAX starts.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("jax")

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = "tests.jax_distribution_scenarios"


def start(*args):
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.Popen([sys.executable, "-m", SCENARIOS, *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process):
    try:
        out, err = process.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    assert process.returncode == 0 and out.strip().endswith("OK"), err[-3000:]


@pytest.mark.parametrize("scenario", ["data_parallel", "model_parallel"])
def test_two_devices_prune_as_one_device_with_masks_laid_out_like_kernels(scenario):
    finish(start(scenario))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_hold_identical_weights_and_match_one_device(tmp_path):
    port = free_port()
    workers = [start("worker", i, port, tmp_path) for i in (0, 1)]
    for worker in workers:
        finish(worker)
    first, second, alone = (np.load(tmp_path / f"{name}.npz")
                            for name in ("process_0", "process_1", "one_device"))
    assert len(first.files) == 2
    for name in first.files:
        np.testing.assert_array_equal(first[name], second[name])
        np.testing.assert_array_equal(first[name] == 0, alone[name] == 0)
        np.testing.assert_allclose(first[name], alone[name], atol=1e-5)
