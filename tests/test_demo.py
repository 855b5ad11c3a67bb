"""The main job: the embedded MNIST subset, `run_demo` and `keras-prune demo`."""

import hashlib
import importlib.resources
import importlib.util
import json
import re
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_prune import demo, load_sparse
from keras_prune.cli import main

pytestmark = pytest.mark.core

REPO = Path(__file__).resolve().parents[1]
# Small, fast settings: one dense epoch and two pruning epochs at batch 128 on the real subset.
FAST = dict(epochs=1, prune_epochs=2, batch_size=128, progress=False)


def load_subset_script():
    spec = importlib.util.spec_from_file_location("make_demo_subset", REPO / "benchmarks" / "make_demo_subset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- the data ---------------------------------------------------------------------------------


def test_demo_data_is_a_balanced_normalized_mnist_subset():
    data = demo.load_demo_data()
    assert data["x_train"].shape == (6000, 28, 28) and data["x_test"].shape == (1000, 28, 28)
    assert data["x_train"].dtype == np.float32 and data["y_train"].dtype == np.int64
    assert data["x_train"].min() == 0.0 and data["x_train"].max() == 1.0
    assert np.bincount(data["y_train"]).tolist() == [600] * 10
    assert np.bincount(data["y_test"]).tolist() == [100] * 10
    # Real digits: a 28x28 MNIST digit lights up roughly 10-25% of its pixels.
    assert 0.08 < np.mean(data["x_train"] > 0.5) < 0.25


def test_packaged_subset_matches_the_digest_its_readme_documents():
    folder = importlib.resources.files("keras_prune") / "data"
    digest = hashlib.sha256((folder / demo.DATA_FILE).read_bytes()).hexdigest()
    readme = (folder / "README.md").read_text()
    assert digest in readme
    assert "CC BY-SA 3.0" in readme
    assert len((folder / demo.DATA_FILE).read_bytes()) < 3 * 1024 * 1024


def test_subset_script_picks_balanced_indices_in_file_order():
    script = load_subset_script()
    labels = np.repeat(np.arange(10), 7)[::-1].copy()  # 7 of each digit, 9s first
    picks = script.balanced_indices(labels, 3, np.random.default_rng(0))
    again = script.balanced_indices(labels, 3, np.random.default_rng(0))
    assert np.array_equal(picks, again)
    assert np.all(np.diff(picks) > 0)
    assert np.bincount(labels[picks]).tolist() == [3] * 10


def test_subset_script_writes_reproducible_bytes_numpy_can_read(tmp_path):
    script = load_subset_script()
    arrays = {"x": np.arange(24, dtype=np.uint8).reshape(2, 3, 4), "y": np.array([3, 1], np.uint8)}
    script.write_npz(tmp_path / "a.npz", arrays)
    script.write_npz(tmp_path / "b.npz", arrays)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    with np.load(tmp_path / "a.npz") as loaded:
        assert sorted(loaded.files) == ["x", "y"]
        np.testing.assert_array_equal(loaded["x"], arrays["x"])


# -- the pieces of run_demo ---------------------------------------------------------------------


@pytest.mark.parametrize("total_steps", [3, 100, 940, 1879])
def test_schedule_reaches_the_target_on_an_update_step_within_two_thirds(total_steps):
    schedule = demo.pruning_schedule(0.9, total_steps)
    end = schedule.end_step
    assert 1 <= end <= max(1, 2 * total_steps // 3)
    assert schedule.should_update(end) and schedule.sparsity_at(end) == pytest.approx(0.9)
    updates = [step for step in range(total_steps) if schedule.should_update(step)]
    assert len(updates) <= 21


def test_output_dir_is_created_and_never_silently_overwritten(tmp_path):
    folder = demo.prepare_output_dir(tmp_path / "new" / "run")
    assert folder.is_dir()
    (folder / demo.PRUNED_FILE).write_text("keep me")
    with pytest.raises(ValueError, match="already holds pruned.keras; pass --overwrite"):
        demo.prepare_output_dir(folder)
    assert demo.prepare_output_dir(folder, overwrite=True) == folder
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        demo.prepare_output_dir(tmp_path / "file")


def test_without_output_dir_each_run_gets_a_new_empty_folder():
    first, second = demo.prepare_output_dir(None), demo.prepare_output_dir(None)
    try:
        assert first != second and not any(first.iterdir())
    finally:
        first.rmdir()
        second.rmdir()


def test_count_prunable_counts_dense_kernels_only():
    model = demo.lenet_300_100()
    kernel = model.get_layer("fc1").kernel
    kernel.assign(np.zeros(kernel.shape, "float32"))
    model.get_layer("fc1").bias.assign(np.ones(300, "float32"))
    assert demo.count_prunable(model) == (300 * 100 + 100 * 10, 784 * 300 + 300 * 100 + 100 * 10)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sparsity": 1.0}, r"Argument `sparsity` must be in \[0, 1\). Received: sparsity=1.0"),
        ({"epochs": 0}, r"Argument `epochs` must be >= 1. Received: epochs=0"),
        ({"batch_size": 2.5}, r"Argument `batch_size` must be an integer"),
    ],
)
def test_bad_arguments_fail_before_any_file_is_written(tmp_path, kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        demo.run_demo(output_dir=tmp_path / "out", progress=False, **kwargs)
    assert not (tmp_path / "out").exists()


def test_progress_bar_counts_every_batch_of_every_epoch():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile("sgd", "mse")
    progress = demo._RichProgress("tiny", total_steps=2 * 5)
    model.fit(np.zeros((10, 3)), np.zeros((10, 2)), batch_size=2, epochs=2, verbose=0, callbacks=[progress])
    task = progress.bar.tasks[0]
    assert task.completed == task.total == 10
    assert task.fields["status"].startswith("epoch 2  loss 0.000")


# -- the whole run --------------------------------------------------------------------------


def test_run_demo_prunes_exactly_keeps_accuracy_and_shrinks_the_gzipped_file(tmp_path):
    result = demo.run_demo(sparsity=0.8, output_dir=tmp_path, **FAST)
    dense, pruned = result.dense, result.pruned

    assert dense.sparsity < 0.01
    # round(0.8 n) per kernel: off from 0.8 by at most half a weight per kernel.
    assert pruned.sparsity == pytest.approx(0.8, abs=1.5 / pruned.prunable_weights)
    assert pruned.prunable_weights == dense.prunable_weights == 266_200
    # Trained for real on real digits: far above chance (10%), and pruning costs little.
    assert dense.accuracy > 0.85 and pruned.accuracy > 0.85
    assert pruned.accuracy > dense.accuracy - 0.05
    # Files hold weights only (no optimizer state): about 4 bytes per parameter.
    assert 266_610 * 4 < dense.keras_bytes < 266_610 * 4 + 100_000
    assert pruned.gzip_bytes < 0.4 * dense.gzip_bytes

    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(demo.OUTPUT_FILES)
    assert (tmp_path / demo.PRUNED_FILE).stat().st_size == pruned.keras_bytes
    # Only the 20% kept weights are stored: well under half the dense file.
    assert result.sparse_bytes < 0.45 * dense.keras_bytes
    assert json.loads((tmp_path / demo.RESULT_FILE).read_text()) == json.loads(json.dumps(result.to_json()))

    data = demo.load_demo_data()
    for reloaded in (keras.saving.load_model(tmp_path / demo.PRUNED_FILE), load_sparse(tmp_path / demo.SPARSE_FILE)):
        assert demo.count_prunable(reloaded) == (pruned.nonzero_weights, pruned.prunable_weights)
        logits = reloaded.predict(data["x_test"], verbose=0)
        assert np.mean(np.argmax(logits, -1) == data["y_test"]) == pytest.approx(pruned.accuracy)


def test_cli_demo_prints_the_table_and_refuses_to_overwrite(tmp_path, capsys):
    args = ["demo", "--epochs", "1", "--prune-epochs", "1", "--batch-size", "256",
            "--sparsity", "0.5", "--output-dir", str(tmp_path), "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    saved = json.loads((tmp_path / demo.RESULT_FILE).read_text())
    assert saved["pruned"]["sparsity"] == pytest.approx(0.5, abs=1e-5)
    assert f"{saved['pruned']['accuracy']:.2%}" in out
    assert re.search(r"sparsity \(Dense kernels\)\s*│\s*0\.0%\s*│\s*50\.0%", out)
    before = (tmp_path / demo.PRUNED_FILE).read_bytes()

    assert main(args) == 1
    assert "already holds" in capsys.readouterr().err
    assert (tmp_path / demo.PRUNED_FILE).read_bytes() == before


def test_cli_demo_rejects_a_bad_sparsity_in_one_line(tmp_path, capsys):
    assert main(["demo", "--sparsity", "1.5", "--output-dir", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "keras-prune demo: error: Argument `sparsity` must be in [0, 1). Received: sparsity=1.5"
    assert not (tmp_path / "x").exists()
