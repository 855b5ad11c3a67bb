"""summarize/PruningReport: counts, patterns, bytes, JSON, the rich table and the plots."""

import json

import keras
import numpy as np
import pytest

import keras_prune.compat.tfmot as tfmot
from keras_prune import ConstantSparsity, PruningReport, magnitude_prune, prune_low_magnitude, summarize
from keras_prune.analysis.plots import plot_layer_sparsity, plot_metric_vs_sparsity
from keras_prune.analysis.report import detect_pattern, sparse_bytes

pytestmark = pytest.mark.core


def model_with_known_zeros():
    model = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(4, name="a"), keras.layers.BatchNormalization(name="bn"),
         keras.layers.Dense(2, use_bias=False, name="b")]
    )
    a = np.ones((8, 4), "float32")
    a[:4] = 0.0  # 16 of 32 zero
    model.get_layer("a").kernel.assign(a)
    model.get_layer("b").kernel.assign(np.arange(1, 9, dtype="float32").reshape(4, 2))
    return model


def test_counts_and_totals():
    report = summarize(model_with_known_zeros())
    a, bn, b = report.layers
    assert (a.params, a.prunable, a.nonzeros, a.sparsity) == (36, 32, 16, 0.5)  # bias is zeros
    assert (bn.prunable, bn.pattern, bn.params) == (0, "-", 16)
    assert (b.params, b.nonzeros, b.sparsity, b.pattern) == (8, 8, 0.0, "dense")
    totals = report.totals
    assert totals["params"] == 60 and totals["prunable"] == 40
    assert totals["sparsity"] == pytest.approx(16 / 40)
    assert totals["dense_bytes"] == 60 * 4
    # layer a's kernel: 32-bit mask (4 bytes) + 16 values; its bias stays dense.
    assert a.compressed_bytes == 4 + 16 * 4 + 4 * 4
    assert totals["compression"] == pytest.approx(240 / totals["compressed_bytes"])


def test_sparse_bytes_never_exceeds_dense():
    assert sparse_bytes(np.zeros(100, "float32")) == 13
    assert sparse_bytes(np.ones(100, "float32")) == 400
    assert sparse_bytes(np.array([0, 1, 2, 3], "float32")) == 1 + 12


@pytest.mark.parametrize(
    "zeros_at, shape, expected",
    [
        (lambda w: w, (8, 4), "dense"),
        (lambda w: np.tile([[1, 0, 0, 1], [0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 1, 0]], (2, 1)), (8, 4), "2:4"),
        (lambda w: np.tile([[0, 1, 1], [1, 0, 1], [1, 1, 0], [1, 1, 1]], (2, 1)), (8, 3), "1:4"),
        (lambda w: np.kron(np.array([[1.0, 0.0], [0.0, 1.0]]), np.ones((4, 2))), (8, 4), "block 4x2"),
        (lambda w: np.where(np.arange(32).reshape(8, 4) % 7 == 0, 0.0, 1.0), (8, 4), "unstructured"),
    ],
)
def test_detect_pattern(zeros_at, shape, expected):
    weights = np.random.default_rng(1).uniform(0.5, 1.0, shape) * zeros_at(np.ones(shape))
    assert detect_pattern(weights) == expected


def test_patterns_after_pruning_are_detected():
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(8, name="d")])
    assert magnitude_prune(model, sparsity_m_by_n=(2, 4)).layer("d").pattern == "2:4"
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(8, name="d")])
    checkerboard = np.indices((4, 2)).sum(axis=0) % 2  # small blocks alternate with large ones
    kernel = np.kron(1 + 9 * checkerboard, np.ones((4, 4))) * np.random.default_rng(0).uniform(1, 2, (16, 8))
    model.get_layer("d").kernel.assign(kernel.astype("float32"))
    assert magnitude_prune(model, sparsity=0.5, block_size=(4, 4)).layer("d").pattern == "block 4x4"


def test_to_dict_and_json_round_trip():
    report = magnitude_prune(model_with_known_zeros(), sparsity=0.25, layers="b")
    data = json.loads(report.to_json())
    assert data["settings"]["sparsity"] == 0.25 and data["settings"]["layers"] == ["b"]
    assert [row["path"] for row in data["layers"]] == ["a", "bn", "b"]
    assert data["layers"][2]["nonzeros"] == 6
    assert data["totals"] == pytest.approx(report.totals)
    assert "model" not in data


def test_table_lists_every_layer_and_totals():
    text = str(summarize(model_with_known_zeros()))
    for token in ("a", "bn", "b", "Dense", "BatchNormalization", "50.0%", "total", "40.0%"):
        assert token in text


def test_model_being_pruned_counts_its_own_weights_not_the_masks():
    pruned = prune_low_magnitude(model_with_known_zeros(), ConstantSparsity(0.5, 0))
    row = summarize(pruned).layer("a")
    assert row.type == "Dense"
    assert (row.params, row.prunable, row.sparsity) == (36, 32, 0.5)
    wrapped = tfmot.sparsity.keras.prune_low_magnitude(model_with_known_zeros(), ConstantSparsity(0.5, 0))
    row = summarize(wrapped).layer("prune_low_magnitude_a")
    assert row.type == "PruneLowMagnitude(Dense)"
    assert (row.params, row.prunable, row.sparsity) == (36, 32, 0.5)


def test_report_on_a_layer_path_lookup_error():
    report = summarize(model_with_known_zeros())
    with pytest.raises(KeyError, match="No layer 'zzz'"):
        report.layer("zzz")
    assert isinstance(report, PruningReport)


def test_plots_write_png_files(tmp_path):
    report = magnitude_prune(model_with_known_zeros(), sparsity=0.5)
    path = plot_layer_sparsity(report, tmp_path / "layers.png")
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    path = plot_metric_vs_sparsity({"one-shot": [(0.5, 0.9), (0.9, 0.5)]}, tmp_path / "acc.png", baseline=0.95)
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no points"):
        plot_metric_vs_sparsity({"x": []}, tmp_path / "none.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acc.png", "layers.png"]


def test_plot_history_needs_the_metric(tmp_path):
    from keras_prune.analysis.plots import plot_history

    report = summarize(model_with_known_zeros())
    report.settings["dense_accuracy"] = 0.9
    report.history = [{"round": 1, "sparsity": 0.5, "accuracy": 0.88}, {"round": 2, "sparsity": 0.75, "accuracy": 0.8}]
    path = plot_history(report, tmp_path / "rounds.png")
    assert open(path, "rb").read(4) == b"\x89PNG"
    with pytest.raises(ValueError, match="no `auc` values"):
        plot_history(report, tmp_path / "auc.png", metric="auc")
