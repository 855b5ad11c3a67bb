"""fold_batchnorm: BatchNorm merged into its producer, same outputs, the rest left alone."""

import keras
import numpy as np
import pytest
from keras import layers as L
from test_structured_surgery import _outputs, _randomize

from keras_prune.structured import fold_batchnorm, foldable_batchnorms, prune_channels

pytestmark = pytest.mark.core


def _every_producer():
    x = keras.Input((8, 8, 3))
    a = L.BatchNormalization(name="bn_conv")(L.Conv2D(8, 3, padding="same", use_bias=False, name="conv")(x))
    a = L.ReLU()(a)
    b = L.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw")(a)
    b = L.ReLU()(L.BatchNormalization(name="bn_dw")(b))
    c = L.SeparableConv2D(12, 3, padding="same", name="sep")(b)
    c = L.BatchNormalization(center=False, name="bn_sep")(c)
    d = L.Dense(6, name="dense")(L.GlobalAveragePooling2D()(c))
    d = L.BatchNormalization(scale=False, name="bn_dense")(d)
    return keras.Model(x, L.Dense(3, name="head")(d))


def _not_foldable():
    x = keras.Input((6, 6, 3))
    a = L.Conv2D(8, 3, activation="relu", name="relu_conv")(x)
    a = L.BatchNormalization(name="after_activation")(a)
    b = L.Conv2D(8, 3, name="branching")(x)
    c = L.Add()([L.BatchNormalization(name="on_a_branch")(b), b])
    d = L.BatchNormalization(axis=1, name="other_axis")(L.Conv2D(8, 1, name="conv_axis1")(x))
    y = L.Concatenate()([L.Flatten()(a), L.Flatten()(c), L.Flatten()(d)])
    return keras.Model(x, L.Dense(2, name="head")(y))


def test_folding_keeps_outputs_for_every_producer_type():
    model = _randomize(_every_producer())
    x = np.random.default_rng(1).normal(size=(4, 8, 8, 3)).astype("float32")
    folded = fold_batchnorm(model)
    assert not any(isinstance(layer, L.BatchNormalization) for layer in folded.layers)
    assert folded.get_layer("conv").use_bias and len(folded.layers) == len(model.layers) - 4
    np.testing.assert_allclose(_outputs(folded, x), _outputs(model, x), rtol=1e-4, atol=1e-4)
    assert _outputs(model, x).std() > 0.1  # not trivially equal
    assert any(isinstance(layer, L.BatchNormalization) for layer in model.layers)  # original kept


def test_batchnorms_that_cannot_fold_are_kept():
    model = _randomize(_not_foldable(), seed=2)
    assert foldable_batchnorms(model) == {}
    folded = fold_batchnorm(model)
    assert [layer.name for layer in folded.layers[1:]] == [layer.name for layer in model.layers[1:]]
    x = np.random.default_rng(3).normal(size=(2, 6, 6, 3)).astype("float32")
    np.testing.assert_allclose(_outputs(folded, x), _outputs(model, x), rtol=1e-5, atol=1e-5)


def test_sequential_and_shrunk_models_fold():
    model = _randomize(keras.Sequential([
        keras.Input((10, 10, 2)), L.Conv2D(16, 3, name="c1"), L.BatchNormalization(name="b1"),
        L.ReLU(), L.Conv2D(16, 3, name="c2"), L.BatchNormalization(name="b2"), L.ReLU(),
        L.GlobalAveragePooling2D(), L.Dense(3, name="head"),
    ]))
    small = prune_channels(model, 0.5, round_to=8)
    folded = fold_batchnorm(small)
    assert isinstance(folded, keras.Sequential)
    assert not any(isinstance(layer, L.BatchNormalization) for layer in folded.layers)
    assert folded.get_layer("c2").filters == 8
    x = np.random.default_rng(4).normal(size=(3, 10, 10, 2)).astype("float32")
    np.testing.assert_allclose(_outputs(folded, x), _outputs(small, x), rtol=1e-4, atol=1e-4)


def test_folded_model_saves_and_loads(tmp_path):
    folded = fold_batchnorm(_randomize(_every_producer()))
    folded.save(tmp_path / "folded.keras")
    loaded = keras.saving.load_model(tmp_path / "folded.keras")
    x = np.ones((1, 8, 8, 3), "float32")
    np.testing.assert_array_equal(_outputs(loaded, x), _outputs(folded, x))


def test_fold_refuses_what_is_not_a_model():
    with pytest.raises(TypeError, match="built Sequential or functional model"):
        fold_batchnorm(L.Dense(3))
