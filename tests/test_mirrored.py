"""Gradual pruning under tf.distribute.MirroredStrategy with two logical CPU devices.

Each scenario of tests/mirrored_scenarios.py runs in a fresh process, because logical
devices must be configured before TensorFlow starts.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.tensorflow_only

ROOT = Path(__file__).resolve().parent.parent


def run_scenario(name, *args):
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-m", "tests.mirrored_scenarios", name, *map(str, args)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and result.stdout.strip().endswith("OK"), result.stderr[-3000:]


def test_replicas_agree_and_pruned_weights_stay_zero_after_every_step():
    run_scenario("train")


def test_checkpoint_saved_under_the_strategy_resumes_in_its_scope(tmp_path):
    run_scenario("resume", tmp_path)


def test_a_model_built_outside_the_scope_is_refused_before_training():
    run_scenario("outside_scope")


def test_several_steps_per_execution_under_a_strategy_get_a_clear_error():
    run_scenario("several_steps_per_execution")
