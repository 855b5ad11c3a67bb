"""A run that would change nothing is an error; a layer it cannot prune as asked is a warning.

Covers selections that match nothing (`layers`, `pruning_policy`, --layers/--exclude), models
with nothing to prune, and patterns that do not fit a weight (N:M on an input axis shorter than
N, blocks larger than the weight), for one-shot, iterative and gradual pruning and the CLI.
"""

import json
import warnings

import keras
import numpy as np
import pytest

import keras_prune as kp
import keras_prune.compat.tfmot as tfmot
from keras_prune import masks
from keras_prune.callbacks import collect_pruning
from keras_prune.cli.prune_model import layer_filter

from helpers import assert_one_line_failure, run_cli

pytestmark = pytest.mark.core


def mlp():
    return keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, name="hidden"), keras.layers.Dense(4, name="out")],
        name="mlp",
    )


def one_channel_cnn():
    """A Conv2D with one input channel (too short for 2:4), then a Dense that fits it."""
    return keras.Sequential(
        [
            keras.Input((6, 6, 1)),
            keras.layers.Conv2D(4, 3, name="conv"),
            keras.layers.Flatten(),
            keras.layers.Dense(8, name="dense"),
        ],
        name="cnn",
    )


def nothing_prunable():
    return keras.Sequential(
        [keras.Input((4, 4, 3)), keras.layers.BatchNormalization(), keras.layers.ReLU(), keras.layers.Flatten()],
        name="plain",
    )


def weights_of(model):
    return [keras.ops.convert_to_numpy(w).copy() for w in model.weights]


def assert_unchanged(model, before):
    for old, new in zip(before, model.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(new), old)


def kernel(model, name):
    return keras.ops.convert_to_numpy(model.get_layer(name).kernel)


class AllowNothing(kp.PruningPolicy):
    def allow_pruning(self, layer):
        return False


# -- the pattern check itself ------------------------------------------------------------------


@pytest.mark.parametrize("shape, kwargs, expected", [
    ((3, 3, 1, 8), {"m_by_n": (2, 4)}, "1 weight, fewer than N=4"),
    ((3, 3, 1, 8), {"m_by_n": (2, 4)}, "stays dense"),
    ((2, 5), {"m_by_n": (2, 4)}, "1 of every 2 are pruned instead of 2:4"),
    ((8, 16), {"block_size": (1000, 1000)}, "covers its whole 8x16 2-D view"),
    ((3, 3, 2, 8), {"block_size": (32, 1)}, "18x8 2-D view, so it is pruned in 18x1 blocks"),
])
def test_pattern_misfit_names_the_reason(shape, kwargs, expected):
    assert expected in masks.pattern_misfit(shape, **kwargs)


@pytest.mark.parametrize("shape, kwargs", [
    ((4, 8), {"m_by_n": (2, 4)}),
    ((3, 3, 4, 8), {"m_by_n": (2, 4)}),
    ((8, 16), {"block_size": (8, 16)}),
    ((3, 3, 2, 8), {"block_size": (2, 4)}),
    ((1, 1), {}),
])
def test_pattern_misfit_is_none_when_the_pattern_fits(shape, kwargs):
    assert masks.pattern_misfit(shape, **kwargs) is None


# -- selections that match nothing -------------------------------------------------------------


@pytest.mark.parametrize("layers", ["logits", lambda layer: False])
def test_layers_selecting_nothing_names_the_selection_and_the_paths(layers):
    model = mlp()
    before = weights_of(model)
    with pytest.raises(ValueError, match=r"Argument `layers` selects none .*\(hidden, out\)\. Received: layers="):
        kp.magnitude_prune(model, sparsity=0.5, layers=layers)
    assert_unchanged(model, before)


def test_layers_selecting_some_layers_is_fine():
    report = kp.magnitude_prune(mlp(), sparsity=0.5, layers="hidden|logits")
    assert report.settings["layers"] == ["hidden"] and report.warnings == []


def test_policy_allowing_nothing_is_an_error_and_changes_nothing():
    model = mlp()
    before = weights_of(model)
    with pytest.raises(ValueError, match=r"`pruning_policy` allows none .*\(hidden, out\).*allow_pruning"):
        tfmot.sparsity.keras.prune_low_magnitude(model, pruning_policy=AllowNothing())
    assert all(layer.kernel.constraint is None for layer in model.layers)
    assert_unchanged(model, before)


@pytest.mark.parametrize("layers, says", [
    (AllowNothing().allow_pruning, "selects none"),
    ("logits", "selects none"),
    (["logits"], "names 'logits', which is not the path or name"),
])
def test_gradual_layers_selecting_nothing_is_an_error_and_changes_nothing(layers, says):
    model = mlp()
    before = weights_of(model)
    with pytest.raises(ValueError, match=rf"Argument `layers` {says} .*\(hidden, out\)\. Received: layers="):
        kp.prune_low_magnitude(model, layers=layers)
    assert all(layer.kernel.constraint is None for layer in model.layers)
    assert_unchanged(model, before)
    assert kp.prune_low_magnitude(model).pruned_layers == ["hidden", "out"]  # nothing was left half-pruned


class TwoDense(keras.Model):
    def __init__(self):
        super().__init__(name="two")
        self.first = keras.layers.Dense(8, name="first")
        self.second = keras.layers.Dense(2, name="second")

    def call(self, x):
        return self.second(self.first(x))


def test_policy_allowing_nothing_in_a_subclassed_model_is_an_error():
    model = TwoDense()
    model(np.zeros((1, 4), "float32"))
    with pytest.raises(ValueError, match="allows none"):
        tfmot.sparsity.keras.prune_low_magnitude(model, pruning_policy=AllowNothing())
    assert not collect_pruning(model) and isinstance(model.first, keras.layers.Dense)
    with pytest.raises(ValueError, match="`layers` selects none"):
        kp.prune_low_magnitude(model, layers=AllowNothing().allow_pruning)
    assert not collect_pruning(model) and model.first.kernel.constraint is None


# -- models with nothing to prune --------------------------------------------------------------


@pytest.mark.parametrize("build", [nothing_prunable, lambda: keras.Sequential(
    [keras.Input((4, 3)), keras.layers.Flatten(), keras.layers.ReLU()], name="plain")])
def test_nothing_prunable_is_a_clear_error_for_every_entry_point(build):
    expected = r"Model 'plain' has nothing to prune: none of its layers \(.*Flatten.*ReLU\).*PrunableLayer"
    with pytest.raises(ValueError, match=expected):
        kp.magnitude_prune(build(), sparsity=0.5)
    with pytest.raises(ValueError, match=expected):
        kp.prune_low_magnitude(build())
    model = build()
    model.compile("sgd", "mse")
    x = np.zeros((4, *model.input_shape[1:]), "float32")
    y = model.predict(x, verbose=0)
    with pytest.raises(ValueError, match=expected):
        kp.iterative_prune(model, (x, y), validation_data=(x, y), sparsity=0.5, steps=1, metric="loss")


# -- patterns that do not fit ------------------------------------------------------------------


def test_two_four_on_a_short_input_axis_is_a_report_warning():
    model = one_channel_cnn()
    conv = kernel(model, "conv")
    report = kp.magnitude_prune(model, sparsity_m_by_n=(2, 4))
    assert report.layer("dense").pattern == "2:4"
    np.testing.assert_array_equal(kernel(model, "conv"), conv)  # left dense, and now it says so
    (warning,) = report.warnings
    assert warning.layer == "conv"
    assert "2:4" in warning.message and "(3, 3, 1, 4)" in warning.message and "stays dense" in warning.message
    assert report.to_dict()["warnings"] == [{"layer": "conv", "message": warning.message}]
    assert f"warning: conv: {warning.message}" in str(report)


def test_two_four_fitting_no_selected_weight_is_an_error():
    model = one_channel_cnn()
    before = weights_of(model)
    with pytest.raises(ValueError, match=r"`sparsity_m_by_n` fits none .*'conv' kernel \(3, 3, 1, 4\).*at least 4"):
        kp.magnitude_prune(model, sparsity_m_by_n=(2, 4), layers="conv")
    assert_unchanged(model, before)


def test_block_larger_than_every_weight_is_an_error_naming_a_block_that_fits():
    model = mlp()
    before = weights_of(model)
    with pytest.raises(ValueError, match=r"`block_size` fits none .*'hidden' kernel \(8, 16\).*block_size=\(8, 4\)"):
        kp.magnitude_prune(model, sparsity=0.5, block_size=(1000, 1000))
    assert_unchanged(model, before)


def test_block_fitting_some_weights_warns_for_the_others():
    report = kp.magnitude_prune(mlp(), sparsity=0.5, block_size=(16, 1))
    assert [w.layer for w in report.warnings] == ["hidden"]
    assert "pruned in 8x1 blocks" in report.warnings[0].message
    assert report.layer("out").pattern == "block 16x1"


def test_iterative_refuses_a_block_that_fits_nothing_before_training():
    model = mlp()
    model.compile("sgd", "mse")
    x = np.ones((4, 8), "float32")
    y = np.ones((4, 4), "float32")
    before = weights_of(model)
    with pytest.raises(ValueError, match="`block_size` fits none"):
        kp.iterative_prune(model, (x, y), validation_data=(x, y), sparsity=0.5, steps=1,
                           metric="loss", block_size=(64, 64))
    assert_unchanged(model, before)
    report = kp.iterative_prune(model, (x, y), validation_data=(x, y), sparsity=0.5, steps=1,
                                epochs_per_step=0, metric="loss", block_size=(16, 1))
    assert [w.layer for w in report.warnings] == ["hidden"]


# -- gradual pruning: known at wrapping time, not after training -------------------------------


def test_gradual_two_four_warns_at_wrap_time_for_a_short_input_axis():
    with pytest.warns(UserWarning, match=r"Layer 'conv': the 2:4 pattern does not fit .*stays dense"):
        pruned = kp.prune_low_magnitude(one_channel_cnn(), sparsity_m_by_n=(2, 4))
    assert pruned.pruned_layers == ["conv", "dense"]
    with pytest.warns(UserWarning, match=r"Layer 'conv': the 2:4 pattern does not fit .*stays dense"):
        wrapped = tfmot.sparsity.keras.prune_low_magnitude(one_channel_cnn(), sparsity_m_by_n=(2, 4))
    # As in tfmot, Flatten gets a wrapper too, one that prunes nothing.
    assert [w.layer.name for w in collect_pruning(wrapped) if w.prunable_weights()] == ["conv", "dense"]


def test_gradual_pattern_fitting_no_layer_is_an_error():
    only_conv = type("OnlyConv", (kp.PruningPolicy,), {"allow_pruning": lambda self, layer: layer.name == "conv"})
    with pytest.raises(ValueError, match="`sparsity_m_by_n` fits none"):
        tfmot.sparsity.keras.prune_low_magnitude(one_channel_cnn(), sparsity_m_by_n=(2, 4), pruning_policy=only_conv())
    for layers in ("conv", only_conv().allow_pruning):
        with pytest.raises(ValueError, match="`sparsity_m_by_n` fits none"):
            kp.prune_low_magnitude(one_channel_cnn(), sparsity_m_by_n=(2, 4), layers=layers)
    with pytest.raises(ValueError, match="`block_size` fits none"):
        kp.prune_low_magnitude(mlp(), block_size=(1000, 1000))
    with pytest.raises(ValueError, match="`block_size` fits none"):
        tfmot.sparsity.keras.prune_low_magnitude(mlp(), block_size=(1000, 1000))
    conv = keras.layers.Conv2D(4, 3)
    conv.build((None, 6, 6, 1))
    with pytest.raises(ValueError, match="`sparsity_m_by_n` fits none"):
        kp.prune_low_magnitude(conv, sparsity_m_by_n=(2, 4))


def test_gradual_fitting_pattern_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        kp.prune_low_magnitude(mlp(), sparsity_m_by_n=(2, 4))
        tfmot.sparsity.keras.prune_low_magnitude(mlp(), sparsity_m_by_n=(2, 4))


# -- the command line --------------------------------------------------------------------------


@pytest.fixture
def mlp_file(tmp_path):
    path = tmp_path / "mlp.keras"
    mlp().save(path)
    return path


@pytest.mark.parametrize("flags, phrases", [
    (["--exclude", "logits"], ["--exclude matches no layer", "--exclude logits", "hidden, out"]),
    (["--layers", "logits"], ["--layers matches no layer", "--layers logits", "hidden, out"]),
    (["--include", "logits"], ["--layers matches no layer", "--layers logits", "hidden, out"]),  # the old name
    (["--include", "hidden", "--exclude", "hid"], ["together leave no layer", "--exclude hid"]),
])
def test_cli_selection_matching_nothing_is_refused(capsys, tmp_path, mlp_file, flags, phrases):
    out = tmp_path / "out.keras"
    code, _, err = run_cli(capsys, "prune", mlp_file, "-o", out, "--sparsity", "0.5", *flags)
    assert_one_line_failure(code, err, *phrases)
    assert not out.exists()


def test_cli_selection_matching_some_layers_is_fine(capsys, tmp_path, mlp_file):
    out, report = tmp_path / "out.keras", tmp_path / "report.json"
    code, _, _ = run_cli(capsys, "prune", mlp_file, "-o", out, "--sparsity", "0.5", "--exclude", "out|logits",
                     "--report", report)
    assert code == 0 and json.loads(report.read_text())["settings"]["exclude"] == "out|logits"
    assert np.count_nonzero(kernel(keras.saving.load_model(out), "out") == 0) == 0


def test_cli_nothing_prunable_is_refused(capsys, tmp_path):
    nothing_prunable().save(tmp_path / "plain.keras")
    code, _, err = run_cli(capsys, "prune", tmp_path / "plain.keras", "-o", tmp_path / "out.keras", "--sparsity", "0.5")
    assert_one_line_failure(code, err, "has nothing to prune", "BatchNormalization")


def test_cli_prints_pattern_warnings_under_the_table_and_in_the_json(capsys, tmp_path):
    one_channel_cnn().save(tmp_path / "cnn.keras")
    out, report = tmp_path / "out.keras", tmp_path / "report.json"
    code, stdout, _ = run_cli(capsys, "prune", tmp_path / "cnn.keras", "-o", out, "--pattern", "2:4", "--report", report)
    assert code == 0
    below = stdout.partition("total")[2]
    assert "warning: conv: the 2:4 pattern does not fit" in below
    assert [w["layer"] for w in json.loads(report.read_text())["warnings"]] == ["conv"]
    code, _, err = run_cli(capsys, "prune", tmp_path / "cnn.keras", "-o", tmp_path / "b.keras", "--sparsity", "0.5",
                       "--pattern", "block:1000x1000")
    assert_one_line_failure(code, err, "fits none", "block:")
    code, _, err = run_cli(capsys, "prune", tmp_path / "cnn.keras", "-o", tmp_path / "c.keras", "--pattern", "2:4",
                       "--include", "conv")
    assert_one_line_failure(code, err, "fits none", "'conv'")


def attention_model():
    inputs = keras.Input((4, 8))
    attended = keras.layers.MultiHeadAttention(2, 4, name="attention")(inputs, inputs)
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(attended))


def test_cli_filter_skips_sub_layers_it_does_not_list():
    model = attention_model()
    wanted = layer_filter(model, None, "logits")
    policy = type("Wanted", (kp.PruningPolicy,), {"allow_pruning": lambda self, layer: wanted(layer)})()
    pruned = tfmot.sparsity.keras.prune_low_magnitude(model, pruning_policy=policy)  # visits the attention's Dense
    assert [w.layer.name for w in collect_pruning(pruned)] == ["attention"]


def test_cli_filter_as_layers_prunes_only_what_it_lists():
    model = attention_model()
    pruned = kp.prune_low_magnitude(model, layers=layer_filter(model, None, "logits"))
    assert pruned.pruned_layers == ["attention"]
    attention = model.get_layer("attention")
    assert [id(w) for w in pruned.prunable_weights()] == [id(w) for w in kp.registry.prunable_weights(attention)]
    assert model.get_layer("logits").kernel.constraint is None
