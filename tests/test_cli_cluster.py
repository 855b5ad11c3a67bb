"""`keras-prune cluster`: N distinct values per tensor or channel, zeros kept, fine-tuning, errors."""

import keras
import numpy as np
import pytest

from helpers import assert_one_line_failure, run_cli

pytestmark = pytest.mark.core


def make_files(tmp_path, sparse=False):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 8)).astype("float32")
    y = (x[:, 0] + x[:, 1] > 0).astype("int64")
    np.savez(tmp_path / "data.npz", x_train=x[:64], y_train=y[:64], x_val=x[64:], y_val=y[64:])
    model = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="relu", name="hidden"),
         keras.layers.Dense(2, name="logits")]
    )
    model.compile(keras.optimizers.Adam(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    if sparse:
        kernel = keras.ops.convert_to_numpy(model.get_layer("hidden").kernel)
        model.get_layer("hidden").kernel.assign(np.where(np.abs(kernel) < np.median(np.abs(kernel)), 0, kernel))
    model.save(tmp_path / "model.keras")
    return tmp_path / "model.keras", tmp_path / "data.npz"


def kernel(path, name):
    return keras.ops.convert_to_numpy(keras.saving.load_model(path).get_layer(name).kernel)


def test_cluster_writes_n_distinct_values_per_tensor(capsys, tmp_path):
    model, _ = make_files(tmp_path)
    out = tmp_path / "out.keras"
    code, stdout, err = run_cli(capsys, "cluster", model, "-o", out, "--clusters", "4", "--init", "linear")
    assert code == 0, err
    assert len(np.unique(kernel(out, "hidden"))) == 4 and len(np.unique(kernel(out, "logits"))) == 4
    assert "hidden/kernel" in stdout and "2 weights clustered" in stdout
    assert type(keras.saving.load_model(out)).__name__ == "Sequential"  # stripped


def test_cluster_per_channel_with_preserved_zeros_and_fine_tuning(capsys, tmp_path):
    model, data = make_files(tmp_path, sparse=True)
    zeros = kernel(model, "hidden") == 0
    out = tmp_path / "out.keras"
    code, stdout, err = run_cli(capsys, "cluster", model, "-o", out, "--clusters", "3", "--per-channel",
                                "--preserve-sparsity", "--layers", "hidden", "--data", data, "--epochs", "2",
                                "--batch-size", "16", "--quiet")
    assert code == 0, err
    hidden = kernel(out, "hidden")
    assert np.array_equal(hidden == 0, zeros)
    assert all(len(np.unique(hidden[:, c][hidden[:, c] != 0])) <= 3 for c in range(16))
    assert len(np.unique(kernel(out, "logits"))) > 3  # not selected
    assert "validation accuracy: dense" in stdout and "1 weights clustered" in stdout
    assert not (tmp_path / "out.keras.ckpt").exists()


def test_cluster_takes_a_count_per_weight(capsys, tmp_path):
    model, _ = make_files(tmp_path)
    out = tmp_path / "out.keras"
    code, stdout, err = run_cli(capsys, "cluster", model, "-o", out, "--clusters", "hidden/kernel=5, logits/kernel=3")
    assert code == 0, err
    assert len(np.unique(kernel(out, "hidden"))) == 5 and len(np.unique(kernel(out, "logits"))) == 3
    assert "2 weights clustered" in stdout


@pytest.mark.parametrize(("flags", "phrase"), [
    (["--clusters", "1"], "--clusters must be >= 2"),
    (["--clusters", "four"], "'four' is not an integer"),
    (["--clusters", "hidden/kernel=4,3"], "'3' is not one"),
    (["--clusters", "hidden/kernel=1"], "--clusters must be >= 2"),
    (["--clusters", "hidden/kernel=4,head/kernel=2"], "head/kernel"),
    (["--clusters", "40"], "larger than the 32 weights of 'logits/kernel'"),
    (["--clusters", "4", "--layers", "nope"], "nope"),
])
def test_bad_input_is_one_line_and_writes_nothing(capsys, tmp_path, flags, phrase):
    model, _ = make_files(tmp_path)
    out = tmp_path / "out.keras"
    code, _, err = run_cli(capsys, "cluster", model, "-o", out, *flags)
    assert_one_line_failure(code, err, phrase)
    assert not out.exists()


def test_interrupted_fine_tuning_resumes_with_the_same_clusters(capsys, tmp_path, monkeypatch):
    from keras_prune.cli import cluster

    model, data = make_files(tmp_path)
    out = tmp_path / "out.keras"
    argv = ["cluster", model, "-o", out, "--clusters", "4", "--data", data, "--epochs", "2", "--batch-size", "16",
            "--quiet"]
    real_save = cluster.Checkpoint.save
    saved = {}

    def save_then_interrupt(self, clustered, epochs_done):
        real_save(self, clustered, epochs_done)
        saved["indices"] = clustered.cluster_indices()
        raise KeyboardInterrupt

    monkeypatch.setattr(cluster.Checkpoint, "save", save_then_interrupt)
    code, _, err = run_cli(capsys, *argv)
    assert code == 130 and not out.exists()
    monkeypatch.setattr(cluster.Checkpoint, "save", real_save)
    resumed = []
    real_load = cluster.Checkpoint.load
    monkeypatch.setattr(cluster.Checkpoint, "load",
                        lambda self, unsafe: resumed.append(result := real_load(self, unsafe)) or result)
    code, _, err = run_cli(capsys, *argv)
    assert code == 0, err
    assert "Resuming from epoch 1/2" in err
    clustered, done = resumed[0]
    assert done == 1 and type(clustered).__name__ == "ClusteredModel"
    for before, after in zip(saved["indices"], clustered.cluster_indices()):
        np.testing.assert_array_equal(before, after)
    assert len(np.unique(kernel(out, "hidden"))) <= 4
    assert not (tmp_path / "out.keras.ckpt").exists()
