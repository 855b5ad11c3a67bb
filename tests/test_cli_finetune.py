"""`keras-prune finetune`: exact sparsity after training, resume after Ctrl-C, data checks."""

import keras
import numpy as np
import pytest

from keras_prune.cli import finetune
from keras_prune.masks import prune_count
from keras_prune.training_data import load_training_data

from helpers import run_cli

pytestmark = pytest.mark.core


def make_files(tmp_path, compiled=True):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 8)).astype("float32")
    y = (x[:, 0] + x[:, 1] > 0).astype("int64")
    np.savez(tmp_path / "data.npz", x_train=x[:64], y_train=y[:64], x_val=x[64:], y_val=y[64:])
    model = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="relu", name="hidden"),
         keras.layers.Dense(2, name="logits")]
    )
    if compiled:
        model.compile(keras.optimizers.Adam(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"], run_eagerly=True)
    model.save(tmp_path / "model.keras")
    return tmp_path / "model.keras", tmp_path / "data.npz"


def zeros(path, name):
    kernel = keras.ops.convert_to_numpy(keras.saving.load_model(path).get_layer(name).kernel)
    return int(np.count_nonzero(kernel == 0))


def test_finetune_reaches_exact_sparsity_and_cleans_up(capsys, tmp_path):
    model, data = make_files(tmp_path)
    out = tmp_path / "out.keras"
    code, stdout, err = run_cli(capsys, "finetune", model, "--data", data, "-o", out, "--sparsity", "0.75",
                            "--epochs", "2", "--batch-size", "16", "--quiet")
    assert code == 0, err
    assert zeros(out, "hidden") == prune_count(0.75, 128) and zeros(out, "logits") == prune_count(0.75, 32)
    assert "validation accuracy: dense" in stdout and "hidden" in stdout
    assert not (tmp_path / "out.keras.ckpt").exists()
    assert [layer.name for layer in keras.saving.load_model(out).layers] == ["hidden", "logits"]


def test_interrupted_run_resumes_from_the_checkpoint(capsys, tmp_path, monkeypatch):
    model, data = make_files(tmp_path)
    out = tmp_path / "out.keras"
    argv = ["finetune", model, "--data", data, "-o", out, "--sparsity", "0.5", "--epochs", "3",
            "--batch-size", "16", "--quiet", "--exclude", "logits"]
    real_save = finetune.Checkpoint.save

    def save_then_interrupt(self, wrapped, epochs_done):
        real_save(self, wrapped, epochs_done)
        if epochs_done == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(finetune.Checkpoint, "save", save_then_interrupt)
    code, _, err = run_cli(capsys, *argv)
    assert code == 130 and "rerun the same command to resume" in err
    assert not out.exists()
    assert sorted(p.name for p in (tmp_path / "out.keras.ckpt").iterdir()) == [".keras-prune-checkpoint", "epoch-2.keras",
                                                                         "state.json"]

    monkeypatch.setattr(finetune.Checkpoint, "save", real_save)
    epochs_run = []
    real_fit = keras.Model.fit
    monkeypatch.setattr(keras.Model, "fit", lambda self, *a, **k: epochs_run.append(k["epochs"] - k["initial_epoch"]) or real_fit(self, *a, **k))
    changed = [*argv[:-2], "--sparsity", "0.6"]  # a different run must not pick up this checkpoint
    changed[argv.index("--sparsity") + 1] = "0.6"
    code, _, err = run_cli(capsys, *changed[:-2])
    assert code == 1 and "different run" in err and "--restart" in err
    code, _, err = run_cli(capsys, *argv)
    assert code == 0, err
    assert "Resuming from epoch 2/3" in err and epochs_run == [1]
    assert zeros(out, "hidden") == 64 and zeros(out, "logits") == 0
    assert not (tmp_path / "out.keras.ckpt").exists()


def test_loss_comes_from_flags_when_the_model_has_none(capsys, tmp_path):
    model, data = make_files(tmp_path, compiled=False)
    out = tmp_path / "out.keras"
    code, _, err = run_cli(capsys, "finetune", model, "--data", data, "-o", out, "--sparsity", "0.5", "--quiet")
    assert code == 1 and "saved without a loss; pass --loss" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "finetune", model, "--data", data, "-o", out, "--sparsity", "0.5", "--quiet",
                       "--loss", "no_such_loss")
    assert code == 1 and "--loss" in err
    code, _, err = run_cli(capsys, "finetune", model, "--data", data, "-o", out, "--sparsity", "0.5", "--quiet",
                       "--epochs", "1", "--batch-size", "32", "--loss", "sparse_categorical_crossentropy", "--learning-rate", "0.001",
                       "--schedule", "constant")
    assert code == 0, err
    assert zeros(out, "hidden") == 64


BAD_DATA = [
    ({"x_train": np.zeros((8, 5), "float32"), "y_train": np.zeros(8, "int64")}, "expects inputs of shape"),
    ({"x_train": np.zeros((8, 8), "float32"), "y_train": np.zeros(7, "int64")}, "must be equal"),
    ({"x_train": np.zeros((8, 8), "float32"), "y_train": np.full(8, 5)}, "outputs 2 classes"),
    ({"x_train": np.full((8, 8), np.nan, "float32"), "y_train": np.zeros(8, "int64")}, "NaN"),
    ({"x": np.zeros((8, 8), "float32")}, "lacks x_train and y_train"),
    ({"x_train": np.zeros((8, 8), "float32"), "y_train": np.zeros(8), "x_val": np.zeros((2, 8))}, "x_val and y_val"),
]


def test_bad_data_is_refused_before_training(capsys, tmp_path):
    model, _ = make_files(tmp_path)
    out = tmp_path / "out.keras"
    for arrays, phrase in BAD_DATA:
        np.savez(tmp_path / "bad.npz", **arrays)
        code, _, err = run_cli(capsys, "finetune", model, "--data", tmp_path / "bad.npz", "-o", out, "--sparsity", "0.5")
        assert code == 1 and phrase in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not out.exists() and not (tmp_path / "out.keras.ckpt").exists()


def test_bad_finetune_arguments(capsys, tmp_path):
    model, data = make_files(tmp_path)
    out = tmp_path / "out.keras"
    for extra, phrase in [
        (["--sparsity", "1.5"], "--sparsity must be in [0, 1)"),
        (["--sparsity", "abc"], "--sparsity must be a number"),
        ([], "Give the final sparsity"),
        (["--sparsity", "0.5", "--epochs", "0"], "--epochs"),
        (["--sparsity", "0.5", "--frequency", "0"], "--frequency"),
    ]:
        code, _, err = run_cli(capsys, "finetune", model, "--data", data, "-o", out, *extra)
        assert code == 1 and phrase in err, (extra, err)
    code, _, err = run_cli(capsys, "finetune", model, "--data", tmp_path / "none.npz", "-o", out, "--sparsity", "0.5")
    assert code == 1 and "does not exist" in err
    (tmp_path / "text.npz").write_text("not numpy")
    code, _, err = run_cli(capsys, "finetune", model, "--data", tmp_path / "text.npz", "-o", out, "--sparsity", "0.5")
    assert code == 1 and "not a readable .npz" in err
    assert not out.exists()


def test_image_folder_tree(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", 3), ("val", 1)):
        for name, value in (("bright", 220), ("dark", 20)):
            folder = tmp_path / "images" / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(value + rng.integers(-10, 10, (10, 12, 3)), 0, 255).astype("uint8")
                Image.fromarray(pixels).save(folder / f"{i}.png")
    model = keras.Sequential([keras.Input((5, 6, 1)), keras.layers.Flatten(), keras.layers.Dense(2)])
    data = load_training_data(tmp_path / "images", model)
    assert data.x_train.shape == (6, 5, 6, 1) and data.x_val.shape == (2, 5, 6, 1)
    assert data.class_names == ["bright", "dark"] and data.y_train.tolist() == [0, 0, 0, 1, 1, 1]
    assert data.x_train[:3].mean() > 0.8 and data.x_train[3:].mean() < 0.2  # scaled to [0, 1]
    with pytest.raises(ValueError, match="no class folders"):
        (tmp_path / "empty").mkdir()
        load_training_data(tmp_path / "empty", model)
    dense_model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="fixed size"):
        load_training_data(tmp_path / "images", dense_model)


def test_validation_split_and_channel_hint(tmp_path):
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(3)])
    np.savez(tmp_path / "d.npz", x_train=np.zeros((10, 4, 4, 1), "float32"), y_train=np.arange(10) % 3)
    data = load_training_data(tmp_path / "d.npz", model, validation_split=0.2)
    assert len(data.x_train) == 8 and data.y_val.tolist() == [2, 0]
    np.savez(tmp_path / "t.npz", x_train=np.zeros((10, 4, 4, 1), "float32"), y_train=np.arange(10) % 3,
             x_test=np.ones((4, 4, 4, 1), "float32"), y_test=np.arange(4) % 3)
    data = load_training_data(tmp_path / "t.npz", model, validation_split=0.2)
    assert len(data.x_train) == 10 and data.y_val.tolist() == [0, 1, 2, 0]  # x_test serves as validation
    np.savez(tmp_path / "flat.npz", x_train=np.zeros((10, 4, 4), "float32"), y_train=np.arange(10) % 3)
    with pytest.raises(ValueError, match=r"Add the channel axis \(x\[..., None\]\)"):
        load_training_data(tmp_path / "flat.npz", model)


def test_help(capsys):
    code, out, _ = run_cli(capsys, "finetune", "--help")
    assert code == 0 and "resume" in out and "M:N" in out
