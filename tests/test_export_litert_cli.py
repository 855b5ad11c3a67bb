"""LiteRT export and the `export` / `size` commands."""

import json

import keras
import numpy as np
import pytest

import keras_prune
from keras_prune.cli import main
from keras_prune.export.litert import convert_litert, litert_max_abs_diff, litert_ops
from keras_prune.masks import sparsity_mask


def mlp(sparsity=0.9):
    model = keras.Sequential(
        [keras.Input((8, 8)), keras.layers.Flatten(), keras.layers.Dense(128, activation="relu"), keras.layers.Dense(4)]
    )
    for layer in model.layers[1:]:
        kernel = keras.ops.convert_to_numpy(layer.kernel)
        layer.kernel.assign(np.where(sparsity_mask(kernel**2, sparsity), kernel, 0))
    return model


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "model.keras"
    mlp().save(path)
    return path


@pytest.mark.tensorflow_only
def test_litert_sparse_conversion_is_smaller_and_matches_keras(tmp_path):
    model = mlp()
    inputs = np.random.default_rng(0).random((5, 8, 8)).astype("float32")
    sparse, plain = convert_litert(model), convert_litert(model, sparse=False)
    assert len(sparse) < 0.4 * len(plain)
    assert litert_max_abs_diff(model, sparse, inputs) < 1e-5
    assert "FULLY_CONNECTED" in litert_ops(sparse)
    path = keras_prune.export_litert(model, tmp_path / "m.tflite")
    assert path.read_bytes() == sparse


def test_litert_refuses_other_backends_with_the_fix(monkeypatch):
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(ValueError, match="KERAS_BACKEND=tensorflow"):
        convert_litert(mlp())


@pytest.mark.core
def test_cli_export_sparse_round_trips_and_reports(model_file, tmp_path, capsys):
    out = tmp_path / "m.kpsparse"
    assert main(["export", str(model_file), "-o", str(out), "--values", "int8"]) == 0
    printed = capsys.readouterr().out
    assert "m.kpsparse" in printed and "max |output difference|" in printed
    assert out.stat().st_size < 0.05 * model_file.stat().st_size
    assert main(["inspect", str(out)]) == 0
    assert "90.0%" in capsys.readouterr().out


@pytest.mark.core
@pytest.mark.parametrize(
    "argv, message",
    [
        (["-o", "{tmp}/m.zip"], "--format sparse or --format litert"),
        (["-o", "{tmp}/m.tflite", "--values", "int8"], "--format sparse only"),
        (["-o", "{tmp}/m.tflite", "--format", "sparse"], ".kpsparse"),
        (["-o", "{tmp}/model.keras", "--format", "sparse"], ".kpsparse|input"),
    ],
)
def test_cli_export_usage_errors_are_one_line_and_write_nothing(model_file, tmp_path, capsys, argv, message):
    before = sorted(p.name for p in tmp_path.iterdir())
    argv = [a.format(tmp=tmp_path) for a in argv]
    assert main(["export", str(model_file), *argv]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert any(part in err for part in message.split("|"))
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.tensorflow_only
def test_cli_size_lists_every_format_with_sparse_beating_gzip(model_file, capsys):
    assert main(["size", str(model_file), "--json"]) == 0
    sizes = json.loads(capsys.readouterr().out)
    # No clustered tensor, so no "sparse_no_codebook" row; Keras quantizes the Dense layers.
    assert set(sizes) == {"keras", "keras_gzip", "sparse", "sparse_float16", "sparse_int8", "keras_int8", "litert"}
    assert sizes["sparse_int8"] < sizes["sparse_float16"] < sizes["sparse"] < 0.85 * sizes["keras_gzip"]
    assert sizes["keras_int8"] < sizes["sparse"]
    assert sizes["keras_gzip"] < sizes["keras"] and sizes["litert"] < sizes["keras"]
