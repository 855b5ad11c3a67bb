"""`keras-prune shrink`: writes a smaller model, reports figures, refuses bad input early."""

import json

import keras
import numpy as np
import pytest

from keras_prune.cli import main


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
                 "--report", str(report)])
    assert code == 0
    small = keras.saving.load_model(out)
    assert (small.get_layer("conv").filters, small.get_layer("hidden").units) == (8, 16)
    assert small.get_layer("hidden").kernel.shape == (4 * 4 * 8, 16)
    figures = json.loads(report.read_text())
    before, after = figures["rows"]["before"], figures["rows"]["after"]
    assert (before["params"], after["params"]) == (8483, small.count_params())
    assert (before["flops"], after["flops"]) == (21184, 2 * (16 * 9 * 8 + 128 * 16 + 16 * 3))
    assert 0.0 <= after["accuracy"] <= 1.0 and after["latency_ms_batch32"] > 0
    assert "conv: kept 8/16" in capsys.readouterr().out


BAD_CALLS = [
    (["--ratio", "1.5"], "--ratio must be in [0, 1)"),
    (["--ratio", "0.5", "--epochs", "2"], "need --data DATA"),
    (["--ratio", "0.5", "--round-to", "0"], "--round-to must be >= 1"),
    (["--ratio", "0.5", "--epochs", "1", "--data", "data.npz"], "pass --loss NAME"),
    (["--ratio", "0.5", "--exclude", "nope"], "does not have: ['nope']"),
    (["--ratio", "0.5", "-o", "model.keras"], "is the input file"),
]


def test_shrink_errors_are_one_line_and_write_nothing(files, capsys, monkeypatch):
    monkeypatch.chdir(files)
    for extra, message in BAD_CALLS:
        code = main(["shrink", "model.keras", "-o", "small.keras", *extra])
        err = capsys.readouterr().err
        assert code == 1 and message in err and len(err.strip().splitlines()) == 1, extra
        assert not (files / "small.keras").exists()


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
