"""tfmot 0.8.1 on Keras 2 and keras_prune.compat.tfmot run the same scripts and agree.

The scripts are in tfmot_scenarios.py: the seed's example 3, tfmot's "Pruning in Keras"
tutorial, its comprehensive guide's recipes and one per behaviour tfmot users rely on. Each
world runs them all in one subprocess; tfmot runs in its own virtualenv
(benchmarks/.venv-tfmot, created from PyPI on first use, as the benchmark harness does).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "benchmarks" / "tfmot_compare"))

import harness  # noqa: E402

pytestmark = [
    pytest.mark.tfmot,
    pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                       reason="tfmot runs on TensorFlow only: the differential tests need KERAS_BACKEND=tensorflow"),
]

# name -> the scenarios of tfmot_scenarios.py (listed here so collection imports no TensorFlow code).
SCENARIOS = [
    "seed_example_three", "pruning_in_keras_tutorial", "prune_some_layers_with_clone_model",
    "custom_training_loop", "prunable_layer", "checkpoint_and_restore_mid_pruning", "step_timing",
    "layers_with_nothing_to_prune", "keyword_calls", "custom_layers_through_strip", "high_sparsity",
    "partly_pruned_models", "schedules", "errors", "what_gets_pruned",
]
# Where keras-prune deliberately accepts more than tfmot: (scenario, key) -> (tfmot's, ours).
EXTENSIONS = {
    # tfmot's wrapper needs its first argument positionally; keras-prune's takes keyword-only calls.
    ("keyword_calls", "keyword_only"): ("ValueError", None),
}


def _run(python, world: str, out: Path, env: dict) -> subprocess.Popen:
    command = [str(python), str(HERE / "tfmot_scenarios.py"), world, str(out)]
    return subprocess.Popen(command, cwd=HERE, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """``{"tfmot": ..., "keras_prune": ...}``: every scenario's results in each world."""
    try:
        tfmot_python = harness.ensure_tfmot_env()
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.fail(f"Could not create the tfmot virtualenv {harness.VENV} from PyPI "
                    f"({', '.join(harness.TFMOT_REQUIREMENTS)}): {error}")
    folder = tmp_path_factory.mktemp("tfmot_differential")
    worlds = {"tfmot": (tfmot_python, {"TF_USE_LEGACY_KERAS": "1"}),
              "keras_prune": (sys.executable, {"KERAS_BACKEND": "tensorflow"})}
    processes = {world: _run(python, world, folder / f"{world}.json", env) for world, (python, env) in worlds.items()}
    found = {}
    for world, process in processes.items():
        output, _ = process.communicate(timeout=1200)
        assert process.returncode == 0, f"the {world} scenarios failed:\n{output[-3000:]}"
        found[world] = json.loads((folder / f"{world}.json").read_text())
    return found


def _assert_same(expected, found, where: str) -> None:
    """Equal, floats to 1e-4 (Keras 2 and 3 may round a last bit differently)."""
    if isinstance(expected, float) or isinstance(found, float):
        assert found == pytest.approx(expected, abs=1e-4), where
    elif isinstance(expected, list) and isinstance(found, list):
        assert len(found) == len(expected), f"{where}: {len(found)} values, tfmot has {len(expected)}"
        for i, (a, b) in enumerate(zip(expected, found)):
            _assert_same(a, b, f"{where}[{i}]")
    elif isinstance(expected, dict) and isinstance(found, dict):
        assert sorted(found) == sorted(expected), where
        for key in expected:
            _assert_same(expected[key], found[key], f"{where}.{key}")
    else:
        assert found == expected, where


@pytest.mark.parametrize("name", SCENARIOS)
def test_keras_prune_behaves_as_tfmot(results, name):
    theirs, ours = results["tfmot"][name], results["keras_prune"][name]
    for world, result in (("tfmot", theirs), ("keras_prune.compat.tfmot", ours)):
        assert "crashed" not in result, f"{name} crashed under {world}:\n{result.get('traceback')}"
    assert sorted(ours) == sorted(theirs)
    for key in theirs:
        if (name, key) in EXTENSIONS:
            assert (theirs[key], ours[key]) == EXTENSIONS[name, key], f"{name}.{key}"
        else:
            _assert_same(theirs[key], ours[key], f"{name}.{key}")
