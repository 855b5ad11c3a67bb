"""keras-prune analyze, prune --allocation and prune --max-drop on a CNN trained on MNIST digits."""

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_prune.datasets import load_idx_dataset

from helpers import assert_one_line_failure, compile_classifier, run_cli

pytestmark = pytest.mark.tensorflow_only

MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    if not MNIST.is_dir():
        pytest.skip(f"{MNIST} is not there")
    keras.utils.set_random_seed(0)
    data = load_idx_dataset(MNIST)
    x, y = data["x_train"][:3000, ::2, ::2, None], data["y_train"][:3000]
    x_test, y_test = data["x_test"][:500, ::2, ::2, None], data["y_test"][:500]
    model = compile_classifier(keras.Sequential([
        keras.Input((14, 14, 1)), keras.layers.Rescaling(1 / 255),
        keras.layers.Conv2D(8, 3, activation="relu", name="conv"), keras.layers.Flatten(),
        keras.layers.Dense(32, activation="relu", name="hidden"), keras.layers.Dense(10, name="logits"),
    ]))
    model.fit(x, y, epochs=2, batch_size=64, verbose=0)
    folder = tmp_path_factory.mktemp("allocation")
    model.save(folder / "cnn.keras")
    np.savez(folder / "digits.npz", x_train=x, y_train=y, x_test=x_test, y_test=y_test)
    return folder


def zeros(path):
    model = keras.saving.load_model(path)
    sizes = {layer.name: int(np.size(layer.kernel)) for layer in model.layers if hasattr(layer, "kernel")}
    pruned = {layer.name: int(np.size(layer.kernel) - np.count_nonzero(layer.kernel))
              for layer in model.layers if hasattr(layer, "kernel")}
    return pruned, sizes


def test_analyze_writes_the_measurements_and_the_plot_and_refuses_to_overwrite(capsys, files):
    out = files / "cnn.sensitivity"
    json_path, png_path = Path(f"{out}.json"), Path(f"{out}.png")
    code, stdout, _ = run_cli(capsys, "analyze", files / "cnn.keras", "--data", files / "digits.npz",
                              "--sparsities", "0.5,0.9", "-o", out, "--quiet")
    assert code == 0
    result = json.loads(json_path.read_text())
    assert set(result["curves"]) == {"conv/kernel", "hidden/kernel", "logits/kernel"}
    assert png_path.read_bytes()[:4] == b"\x89PNG"
    assert "hidden/kernel" in stdout
    before = json_path.read_bytes()
    code, _, err = run_cli(capsys, "analyze", files / "cnn.keras", "--data", files / "digits.npz", "-o", out)
    assert_one_line_failure(code, err, "exists")
    assert json_path.read_bytes() == before


def test_allocation_rules_meet_the_overall_sparsity_exactly(capsys, files):
    for rule in ("uniform", "global", "erk"):
        output = files / f"{rule}.keras"
        code, _, err = run_cli(capsys, "prune", files / "cnn.keras", "-o", output, "--sparsity", "0.8",
                               "--allocation", rule, "--quiet")
        assert code == 0, err
        pruned, sizes = zeros(output)
        assert sum(pruned.values()) == round(0.8 * sum(sizes.values())), rule
    erk, _ = zeros(files / "erk.keras")
    uniform, _ = zeros(files / "uniform.keras")
    assert erk["logits"] < uniform["logits"]  # the small layer keeps more


def test_max_drop_finds_a_sparse_model_within_the_budget(capsys, files):
    output = files / "budget.keras"
    code, stdout, err = run_cli(capsys, "prune", files / "cnn.keras", "-o", output, "--max-drop", "1.0",
                                "--data", files / "digits.npz", "--quiet")
    assert code == 0, err
    assert "reached" in stdout and "step 1" in stdout
    model = keras.saving.load_model(files / "cnn.keras")
    pruned = keras.saving.load_model(output)
    data = np.load(files / "digits.npz")
    dense = model.evaluate(data["x_test"], data["y_test"], verbose=0, return_dict=True)["accuracy"]
    after = pruned.evaluate(data["x_test"], data["y_test"], verbose=0, return_dict=True)["accuracy"]
    assert dense - after <= 0.01 + 1e-9
    counts, sizes = zeros(output)
    assert sum(counts.values()) / sum(sizes.values()) > 0.3


@pytest.mark.parametrize(
    ("flags", "phrase"),
    [
        (["--sparsity", "0.8", "--allocation", "owl"], "needs --calibration DATA or --data DATA"),
        (["--sparsity", "0.8", "--sensitivity", "x.json"], "would be unused"),
        (["--max-drop", "1.0", "--data", "digits.npz", "--sparsity", "0.5"], "drop --sparsity"),
        (["--max-drop", "-1", "--data", "digits.npz"], "--max-drop must be"),
        (["--allocation", "erk"], "give --sparsity S"),
    ],
)
def test_bad_budget_flags_fail_in_one_line_and_write_nothing(capsys, files, flags, phrase, monkeypatch):
    monkeypatch.chdir(files)
    code, _, err = run_cli(capsys, "prune", "cnn.keras", "-o", "bad.keras", *flags)
    assert_one_line_failure(code, err, phrase)
    assert not (files / "bad.keras").exists()
