"""`keras-prune shrink`: writes a smaller model, reports figures, refuses bad input early."""

import gzip
import json

import keras
import numpy as np
import pytest

from keras_prune.cli import main
from keras_prune.cli._checkpoint import Checkpoint
from keras_prune.datasets import IDX_FILES


@pytest.fixture
def files(tmp_path):
    model = keras.Sequential([
        keras.Input((6, 6, 1)),
        keras.layers.Conv2D(16, 3, activation="relu", name="conv"),
        keras.layers.Flatten(),
        keras.layers.Dense(32, activation="relu", name="hidden"),
        keras.layers.Dense(3, name="logits"),
    ])
    model.save(tmp_path / "model.keras")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6, 6, 1)).astype("float32")
    y = (x[:, 0, 0, 0] > 0).astype("int64")
    np.savez(tmp_path / "data.npz", x_train=x, y_train=y, x_test=x[:32], y_test=y[:32])
    return tmp_path


def test_shrink_writes_the_smaller_model_and_the_report(files, capsys):
    out, report = files / "small.keras", files / "report.json"
    code = main(["shrink", str(files / "model.keras"), "-o", str(out), "--ratio", "0.5",
                 "--round-to", "8", "--data", str(files / "data.npz"), "--epochs", "1",
                 "--loss", "sparse_categorical_crossentropy", "--from-logits",
                 "--metrics", "accuracy", "--report", str(report), "--quiet"])
    assert code == 0
    small = keras.saving.load_model(out)
    assert (small.get_layer("conv").filters, small.get_layer("hidden").units) == (8, 16)
    assert small.get_layer("hidden").kernel.shape == (4 * 4 * 8, 16)
    figures = json.loads(report.read_text())
    before, after = figures["rows"]["before"], figures["rows"]["after"]
    assert (before["params"], after["params"]) == (8483, small.count_params())
    assert (before["flops"], after["flops"]) == (21184, 2 * (16 * 9 * 8 + 128 * 16 + 16 * 3))
    assert 0.0 <= after["val_accuracy"] <= 1.0 and after["val_loss"] > 0
    assert after["latency_ms_batch32"] > 0
    assert not (files / "small.keras.ckpt").exists()
    assert "conv: kept 8/16" in capsys.readouterr().out


BAD_CALLS = [
    (["--ratio", "1.5"], "--ratio must be in [0, 1)"),
    (["--ratio", "0.5", "--epochs", "2"], "need --data DATA"),
    (["--ratio", "0.5", "--round-to", "0"], "--round-to must be >= 1"),
    (["--ratio", "0.5", "--epochs", "1", "--data", "data.npz"], "saved without a loss; pass --loss"),
    (["--ratio", "0.5", "--epochs", "1", "--data", "bad_labels.npz", "--loss", "mse"], "outputs 3 classes"),
    (["--ratio", "0.5", "--data", "data.npz", "--from-logits"], "--from-logits goes with --loss"),
    (["--ratio", "0.5", "--epochs", "1", "--data", "data.npz", "--loss", "mean_squared_error",
      "--from-logits"],
     "no logits form"),
    (["--ratio", "0.5", "--exclude", "nope"], "does not have: ['nope']"),
    (["--ratio", "0.5", "-o", "model.keras"], "is the input file"),
]


def test_shrink_errors_are_one_line_and_write_nothing(files, capsys, monkeypatch):
    monkeypatch.chdir(files)
    x = np.zeros((8, 6, 6, 1), "float32")
    np.savez(files / "bad_labels.npz", x_train=x, y_train=np.full(8, 7))
    for extra, message in BAD_CALLS:
        code = main(["shrink", "model.keras", "-o", "small.keras", *extra])
        err = capsys.readouterr().err
        assert code == 1 and message in err and len(err.strip().splitlines()) == 1, extra
        assert not (files / "small.keras").exists() and not (files / "small.keras.ckpt").exists()


@pytest.mark.tensorflow_only
def test_shrink_measures_litert_latency_too(files):
    report = files / "report.json"
    code = main(["shrink", str(files / "model.keras"), "-o", str(files / "small.keras"),
                 "--ratio", "0.5", "--litert", "--report", str(report)])
    assert code == 0
    before, after = (json.loads(report.read_text())["rows"][k] for k in ("before", "after"))
    for key in ("latency_ms_batch1", "latency_ms_batch32", "litert_latency_ms_batch1",
                "litert_latency_ms_batch32"):
        assert before[key] > 0 and after[key] > 0


def test_interrupted_fine_tuning_resumes_from_the_checkpoint(files, capsys, monkeypatch):
    out = files / "small.keras"
    argv = ["shrink", str(files / "model.keras"), "-o", str(out), "--ratio", "0.5",
            "--data", str(files / "data.npz"), "--epochs", "3", "--quiet",
            "--loss", "sparse_categorical_crossentropy", "--from-logits"]
    real_save = Checkpoint.save

    def save_then_interrupt(self, model, epochs_done):
        real_save(self, model, epochs_done)
        if epochs_done == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(Checkpoint, "save", save_then_interrupt)
    assert main(argv) == 130 and "rerun the same command to resume" in capsys.readouterr().err
    assert not out.exists()
    saved = keras.saving.load_model(files / "small.keras.ckpt" / "epoch-2.keras")
    assert saved.get_layer("hidden").units == 16  # the checkpoint holds the shrunk model

    monkeypatch.setattr(Checkpoint, "save", real_save)
    epochs_run = []
    real_fit = keras.Model.fit
    monkeypatch.setattr(keras.Model, "fit", lambda self, *a, **k: epochs_run.append(
        k["epochs"] - k["initial_epoch"]) or real_fit(self, *a, **k))
    assert main([*argv[:5], "0.25", *argv[6:]]) == 1  # another ratio is another run
    assert "different run" in capsys.readouterr().err
    assert main(argv) == 0
    assert "Resuming from epoch 2/3" in capsys.readouterr().err and epochs_run == [1]
    assert keras.saving.load_model(out).get_layer("hidden").units == 16
    assert not (files / "small.keras.ckpt").exists()


def test_shrink_reads_an_idx_folder_with_its_test_split_as_validation(files):
    rng = np.random.default_rng(1)
    arrays = {"x_train": rng.integers(0, 256, (40, 6, 6)), "y_train": rng.integers(0, 3, 40),
              "x_test": rng.integers(0, 256, (7, 6, 6)), "y_test": rng.integers(0, 3, 7)}
    folder = files / "idx"
    folder.mkdir()
    for key, name in IDX_FILES.items():
        values = arrays[key].astype(np.uint8)
        header = bytes([0, 0, 8, values.ndim]) + b"".join(d.to_bytes(4, "big") for d in values.shape)
        with gzip.open(folder / name, "wb") as f:
            f.write(header + values.tobytes())
    report = files / "report.json"
    code = main(["shrink", str(files / "model.keras"), "-o", str(files / "small.keras"),
                 "--ratio", "0.5", "--data", str(folder), "--epochs", "1", "--quiet",
                 "--loss", "sparse_categorical_crossentropy", "--from-logits",
                 "--metrics", "accuracy", "--report", str(report)])
    assert code == 0
    rows = json.loads(report.read_text())["rows"]
    for row in rows.values():  # scored on the 7 test images, not the 40 training ones
        assert abs(7 * row["val_accuracy"] - round(7 * row["val_accuracy"])) < 1e-5


def test_fold_batchnorm_writes_the_same_function_without_batchnorm(tmp_path):
    model = keras.Sequential([
        keras.Input((6, 6, 2)), keras.layers.Conv2D(16, 3, name="conv"),
        keras.layers.BatchNormalization(name="bn"), keras.layers.ReLU(),
        keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3, name="logits"),
    ])
    rng = np.random.default_rng(5)
    for variable in model.weights:
        value = rng.normal(size=variable.shape)
        variable.assign(np.abs(value) + 0.5 if "variance" in variable.path else value)
    model.save(tmp_path / "model.keras")
    for name, extra in (("plain", []), ("folded", ["--fold-batchnorm"])):
        assert main(["shrink", str(tmp_path / "model.keras"), "-o", str(tmp_path / f"{name}.keras"),
                     "--ratio", "0.5", *extra]) == 0
    plain, folded = (keras.saving.load_model(tmp_path / f"{n}.keras") for n in ("plain", "folded"))
    assert [type(layer).__name__ for layer in folded.layers] == ["Conv2D", "ReLU",
                                                                 "GlobalAveragePooling2D", "Dense"]
    x = rng.normal(size=(4, 6, 6, 2)).astype("float32")
    np.testing.assert_allclose(folded.predict(x, verbose=0), plain.predict(x, verbose=0), atol=1e-4)


def test_shrink_removes_heads_and_ffn_units_of_a_kerashub_language_model(tmp_path, capsys):
    pytest.importorskip("keras_hub")
    from helpers import run_cli
    from hub_backbones import BACKBONES, sample_inputs

    backbone = BACKBONES["gpt2"]()
    inputs = {t.name: keras.Input((None,), dtype=t.dtype, name=t.name) for t in backbone.inputs}
    lm = keras.Model(inputs, keras.layers.Dense(256, name="logits")(backbone(inputs)))
    lm.save(tmp_path / "model.keras")
    code, out, err = run_cli(capsys, "shrink", tmp_path / "model.keras", "-o", tmp_path / "small.keras",
                             "--ratio", "0.5")
    assert code == 0, err
    lines = out.splitlines()
    assert "gpt2_backbone/transformer_layer_0: heads 4 -> 2, ffn 64 -> 32" in lines
    assert "gpt2_backbone/transformer_layer_1: heads 4 -> 2, ffn 64 -> 32" in lines
    assert "gpt2_backbone: becomes a functional keras.Model" in out
    assert "logits: kept 256/256 (model output channels are kept)" in lines
    small = keras.saving.load_model(tmp_path / "small.keras")  # no custom_objects
    new_backbone = small.get_layer("gpt2_backbone")
    for i in range(2):
        block = new_backbone.get_layer(f"transformer_layer_{i}")
        assert type(block).__name__ == "PrunedTransformerDecoder"
        assert (block.num_heads, block.head_dim, block.intermediate_dim) == (2, 8, 32)
        assert block._self_attention_layer.query_dense.kernel.shape == (32, 2, 8)
    assert small.count_params() == lm.count_params() - 2 * (32 * 2 * 8 * 3 + 2 * 8 * 3 + 2 * 8 * 32) - 2 * (
        32 * 32 + 32 + 32 * 32)
    x = sample_inputs(backbone)
    assert small(x).shape == (2, 16, 256)
