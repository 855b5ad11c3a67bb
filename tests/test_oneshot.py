"""magnitude_prune: exact counts, thresholds, global ranking, patterns, filters, plan-then-apply."""

import keras
import numpy as np
import pytest

import keras_prune.compat.tfmot as tfmot
from keras_prune import PrunableLayer, UnsupportedLayerError, magnitude_prune, prune_low_magnitude
from keras_prune.masks import prune_count

pytestmark = pytest.mark.core


def small_model():
    return keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            keras.layers.Conv2D(4, 3, use_bias=False, name="conv"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.DepthwiseConv2D(3, name="depthwise"),
            keras.layers.Flatten(),
            keras.layers.Dense(8, name="hidden"),
            keras.layers.Dense(3, use_bias=False, name="logits"),
        ],
        name="net",
    )


def kernel(model, name):
    return keras.ops.convert_to_numpy(model.get_layer(name).weights[0])


def zeros(array):
    return int(array.size - np.count_nonzero(array))


def test_layer_scope_prunes_exact_count_per_tensor_and_keeps_largest():
    model = small_model()
    before = {n: kernel(model, n) for n in ("conv", "depthwise", "hidden", "logits")}
    report = magnitude_prune(model, sparsity=0.7)
    for name, old in before.items():
        new = kernel(model, name)
        assert zeros(new) == prune_count(0.7, old.size)
        kept = np.abs(old[new != 0])
        pruned = np.abs(old[new == 0])
        assert kept.min() >= pruned.max()  # magnitude order respected
        np.testing.assert_array_equal(new[new != 0], old[new != 0])  # survivors untouched
        assert report.layer(name).sparsity == pytest.approx(prune_count(0.7, old.size) / old.size)
    assert report.model is model
    assert report.settings["layers"] == ["conv", "depthwise", "hidden", "logits"]


def test_biases_and_batchnorm_are_not_pruned():
    model = small_model()
    bias = keras.ops.convert_to_numpy(model.get_layer("hidden").bias) + 1.0
    model.get_layer("hidden").bias.assign(bias)
    bn = [keras.ops.convert_to_numpy(w) for w in model.get_layer("bn").weights]
    magnitude_prune(model, sparsity=0.9)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.get_layer("hidden").bias), bias)
    for old, new in zip(bn, model.get_layer("bn").weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(new), old)


def test_global_scope_ranks_all_weights_together():
    model = small_model()
    model.get_layer("logits").kernel.assign(np.full((8, 3), 100.0, "float32"))  # largest
    before = np.concatenate([kernel(model, n).ravel() for n in ("conv", "depthwise", "hidden", "logits")])
    report = magnitude_prune(model, sparsity=0.5, scope="global")
    after = np.concatenate([kernel(model, n).ravel() for n in ("conv", "depthwise", "hidden", "logits")])
    assert zeros(after) == prune_count(0.5, before.size)
    assert np.abs(before[after != 0]).min() >= np.abs(before[after == 0]).max()
    assert report.layer("logits").sparsity == 0.0
    assert report.totals["sparsity"] == pytest.approx(prune_count(0.5, before.size) / before.size)


def test_threshold_prunes_at_or_below_threshold():
    model = small_model()
    model.get_layer("logits").kernel.assign(np.linspace(-1, 1, 24, dtype="float32").reshape(8, 3))
    before = kernel(model, "logits")
    report = magnitude_prune(model, threshold=0.5)
    after = kernel(model, "logits")
    np.testing.assert_array_equal(after == 0, np.abs(before) <= 0.5)
    assert report.settings["threshold"] == 0.5 and report.settings["sparsity"] is None


def test_layer_filter_regex_and_callable():
    model = small_model()
    magnitude_prune(model, sparsity=0.5, layers="^(hidden|logits)$")
    assert zeros(kernel(model, "conv")) == 0 and zeros(kernel(model, "hidden")) == 64
    model = small_model()
    magnitude_prune(model, sparsity=0.5, layers=lambda layer: isinstance(layer, keras.layers.Conv2D))
    assert zeros(kernel(model, "conv")) == 36 and zeros(kernel(model, "hidden")) == 0


def test_nested_model_paths_and_pruning():
    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(6, name="d")], name="block")
    model = keras.Sequential([keras.Input((4,)), inner, keras.layers.Dense(2, name="out")])
    report = magnitude_prune(model, sparsity=0.5, layers="block/")
    assert report.settings["layers"] == ["block/d"]
    assert zeros(keras.ops.convert_to_numpy(inner.layers[0].kernel)) == 12


def test_m_by_n_and_block_patterns():
    model = small_model()
    report = magnitude_prune(model, sparsity_m_by_n=(2, 4), layers="hidden")
    groups = (kernel(model, "hidden") == 0).T.reshape(-1, 4)  # groups along the input axis
    assert (groups.sum(axis=1) == 2).all()
    assert report.layer("hidden").pattern == "2:4"
    model = small_model()
    report = magnitude_prune(model, sparsity=0.5, block_size=(4, 1), layers="hidden")
    blocks = (kernel(model, "hidden") == 0).reshape(-1, 4, 8)
    assert (blocks.all(axis=1) == blocks.any(axis=1)).all() and report.layer("hidden").sparsity == 0.5


def test_inplace_false_leaves_the_original_untouched():
    model = small_model()
    before = [keras.ops.convert_to_numpy(w) for w in model.weights]
    report = magnitude_prune(model, sparsity=0.8, inplace=False)
    for old, new in zip(before, model.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(new), old)
    assert report.model is not model
    assert zeros(keras.ops.convert_to_numpy(report.model.get_layer("hidden").kernel)) == prune_count(0.8, 128)


BAD_ARGUMENTS = [
    ({"sparsity": 1.5}, ValueError, "Received: sparsity=1.5"),
    ({"sparsity": -0.1}, ValueError, "[0, 1)"),
    ({"sparsity": "abc"}, TypeError, "sparsity='abc'"),
    ({}, ValueError, "exactly one of"),
    ({"sparsity": 0.5, "threshold": 0.1}, ValueError, "exactly one of"),
    ({"threshold": -1.0}, ValueError, "threshold=-1.0"),
    ({"threshold": float("nan")}, ValueError, "finite"),
    ({"sparsity": 0.5, "scope": "model"}, ValueError, "scope"),
    ({"sparsity": 0.5, "scope": "global", "block_size": (2, 2)}, ValueError, "scope='layer'"),
    ({"sparsity": 0.5, "sparsity_m_by_n": (2, 4)}, ValueError, "neither"),
    ({"sparsity_m_by_n": (4, 2)}, ValueError, "m < n"),
    ({"threshold": 0.1, "block_size": (2, 2)}, ValueError, "block_size"),
    ({"sparsity": 0.5, "layers": "("}, ValueError, "regular expression"),
    ({"sparsity": 0.5, "layers": 3}, TypeError, "layers=3"),
    ({"sparsity": 0.5, "layers": "no_such_layer"}, ValueError, "layers='no_such_layer'"),
]


def test_bad_arguments_raise_and_change_nothing():
    model = small_model()
    before = [keras.ops.convert_to_numpy(w) for w in model.weights]
    for kwargs, error, text in BAD_ARGUMENTS:
        with pytest.raises(error) as info:
            magnitude_prune(model, **kwargs)
        assert text in str(info.value), (kwargs, str(info.value))
    for old, new in zip(before, model.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(new), old)


def test_non_finite_weights_are_refused_before_any_change():
    model = small_model()
    bad = kernel(model, "logits")
    bad[0, 0] = np.nan
    model.get_layer("logits").kernel.assign(bad)
    conv = kernel(model, "conv")
    with pytest.raises(ValueError, match="logits.*NaN or infinite"):
        magnitude_prune(model, sparsity=0.5)
    np.testing.assert_array_equal(kernel(model, "conv"), conv)  # earlier layer not pruned


class Scale(keras.layers.Layer):
    def build(self, shape):
        self.w = self.add_weight(shape=(shape[-1],), initializer="ones")

    def call(self, x):
        return x * self.w


class PrunableScale(Scale, PrunableLayer):
    def get_prunable_weights(self):
        return [self.w]


def test_unsupported_custom_layer_is_left_dense_and_named_unless_selected_alone():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4, name="d"), Scale(name="scale")])
    for selection in ("scale", ["scale"], lambda layer: layer.name == "scale"):
        with pytest.raises(UnsupportedLayerError, match="'scale'.*holds weights.*PrunableLayer.*--layers"):
            magnitude_prune(model, sparsity=0.5, layers=selection)
    assert zeros(kernel(model, "d")) == 0
    report = magnitude_prune(model, sparsity=0.5)
    assert report.layer("scale").pattern == "unsupported" and report.layer("d").sparsity == 0.5
    assert zeros(kernel(model, "scale")) == 0
    assert [(note.layer, "PrunableLayer" in note.message) for note in report.left_dense] == [("scale", True)]


def test_model_with_only_unsupported_weights_names_them():
    model = keras.Sequential([keras.Input((4,)), Scale(name="scale")], name="m")
    with pytest.raises(UnsupportedLayerError, match="Model 'm' holds no weights .*'scale'.*PrunableLayer"):
        magnitude_prune(model, sparsity=0.5)


def test_custom_prunable_layer_is_pruned():
    model = keras.Sequential([keras.Input((4,)), PrunableScale(name="scale")])
    model.get_layer("scale").w.assign(np.array([0.1, -3.0, 0.2, 4.0], "float32"))
    magnitude_prune(model, sparsity=0.5)
    np.testing.assert_array_equal(kernel(model, "scale"), [0.0, -3.0, 0.0, 4.0])


def test_unbuilt_or_wrapped_model_is_refused():
    model = keras.Sequential([keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="build it first"):
        magnitude_prune(model, sparsity=0.5)
    model = small_model()
    pruned = prune_low_magnitude(model)
    with pytest.raises(ValueError, match="being pruned gradually.*strip_pruning"):
        magnitude_prune(pruned, sparsity=0.5)
    with pytest.raises(ValueError, match="'conv' is being pruned gradually.*strip_pruning"):
        magnitude_prune(model, sparsity=0.5)  # the model inside: its masks would go out of date
    wrapped = tfmot.sparsity.keras.prune_low_magnitude(small_model())
    with pytest.raises(ValueError, match="'prune_low_magnitude_conv' is being pruned gradually.*strip_pruning"):
        magnitude_prune(wrapped, sparsity=0.5)


def test_predictions_match_manual_masking():
    model = small_model()
    x = np.random.default_rng(0).normal(size=(5, 6, 6, 2)).astype("float32")
    reference = keras.models.clone_model(model)
    reference.set_weights(model.get_weights())
    magnitude_prune(model, sparsity=0.6, layers="hidden")
    w = kernel(reference, "hidden")
    w[np.abs(w) <= np.sort(np.abs(w).ravel())[prune_count(0.6, w.size) - 1]] = 0
    reference.get_layer("hidden").kernel.assign(w)
    np.testing.assert_allclose(model.predict(x, verbose=0), reference.predict(x, verbose=0), rtol=1e-6)


class TwoLayers(keras.Model):
    def __init__(self):
        super().__init__(name="sub")
        self.first = keras.layers.Dense(8, name="first")
        self.second = keras.layers.Dense(2, use_bias=False, name="second")

    def call(self, x):
        return self.second(self.first(x))


def test_subclassed_model_layers_are_pruned():
    model = TwoLayers()
    model(np.zeros((1, 4), "float32"))
    report = magnitude_prune(model, sparsity=0.5)
    assert report.settings["layers"] == ["first", "second"]
    assert zeros(keras.ops.convert_to_numpy(model.first.kernel)) == 16
    assert zeros(keras.ops.convert_to_numpy(model.second.kernel)) == 8
