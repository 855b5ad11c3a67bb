"""register_handler: a custom layer class gets prunable weights, FLOPs and channel rules."""

import keras
import numpy as np
import pytest

import keras_prune as kp
from keras_prune import handlers, registry
from keras_prune.analysis.flops import count_flops
from keras_prune.structured import ChannelGraph, foldable_batchnorms

from helpers import compile_classifier, dense_data

pytestmark = pytest.mark.core
L = keras.layers


@keras.saving.register_keras_serializable(package="test_handlers")
class Linear(L.Layer):
    """Dense-like, but not a Dense: its own ``w`` and ``b`` weights."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], self.units), name="w")
        self.b = self.add_weight(shape=(self.units,), initializer="zeros", name="b")

    def call(self, x):
        return keras.ops.matmul(x, self.w) + self.b

    def get_config(self):
        return {**super().get_config(), "units": self.units}


LINEAR = kp.LayerHandler(
    prunable=lambda layer: [layer.w],
    channel_axes={"w": ("in", "out"), "b": ("out",)},
    width_key="units",
    flops=lambda layer, inputs, outputs: 2 * int(inputs[0][-1]) * int(outputs[0][-1]),
)
kp.register_handler(Linear, LINEAR)


def linear_mlp():
    inputs = keras.Input((16,))
    x = Linear(12, name="lin")(inputs)
    x = L.ReLU(name="relu")(x)
    outputs = L.Dense(3, name="head")(x)
    return keras.Model(inputs, outputs, name="linear_mlp")


def test_registered_layer_has_prunable_weights_and_is_magnitude_pruned():
    model = linear_mlp()
    layer = model.get_layer("lin")
    assert registry.has_rule(layer)
    assert [w.path for w in registry.prunable_weights(layer)] == ["lin/w"]
    report = kp.magnitude_prune(model, sparsity=0.5)
    assert report.layer("lin").sparsity == 0.5
    w = keras.ops.convert_to_numpy(layer.w)
    assert np.mean(w == 0) == 0.5
    assert not report.left_dense


def test_registered_layer_is_pruned_gradually_with_fit():
    model = linear_mlp()
    pruned = kp.prune_low_magnitude(model, kp.ConstantSparsity(0.75, 0))
    assert sorted(pruned.pruned_layers) == ["head", "lin"]
    x, y = dense_data()
    compile_classifier(pruned).fit(x, y, epochs=1, callbacks=[kp.UpdatePruningStep()], verbose=0)
    w = keras.ops.convert_to_numpy(model.get_layer("lin").w)
    assert np.mean(w == 0) == 0.75
    stripped = kp.strip_pruning(pruned)
    assert np.mean(keras.ops.convert_to_numpy(stripped.get_layer("lin").w) == 0) == 0.75


def test_registered_flops_are_counted():
    flops = count_flops(linear_mlp())
    assert flops["lin"] == 2 * 16 * 12
    assert flops["head"] == 2 * 12 * 3


def test_registered_producer_loses_channels_and_keeps_outputs_when_they_were_zero():
    model = linear_mlp()
    rng = np.random.default_rng(0)
    for variable in model.weights:
        variable.assign(rng.normal(size=variable.shape).astype("float32"))
    layer = model.get_layer("lin")
    dead = [1, 4, 5, 9, 10, 11]
    w, b = (keras.ops.convert_to_numpy(v) for v in (layer.w, layer.b))
    w[:, dead], b[dead] = 0.0, 0.0
    layer.w.assign(w)
    layer.b.assign(b)
    head = model.get_layer("head")
    kernel = keras.ops.convert_to_numpy(head.kernel)
    kernel[dead] = 0.0
    head.kernel.assign(kernel)
    (group,) = [g for g in ChannelGraph(model).groups if g.producers == ("lin",)]
    assert group.blocked is None and set(group.layers) == {"lin", "head"}
    x = rng.normal(size=(5, 16)).astype("float32")
    small = kp.prune_channels(model, 0.5)
    assert isinstance(small.get_layer("lin"), Linear)
    assert small.get_layer("lin").units == 6
    assert tuple(small.get_layer("lin").w.shape) == (16, 6)
    assert tuple(small.get_layer("head").kernel.shape) == (6, 3)
    np.testing.assert_allclose(small.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-5)


def test_unregistered_custom_layer_is_still_left_alone():
    class Other(Linear):
        pass

    assert handlers.handler_for(Other) is LINEAR  # a subclass of a registered class
    plain = type("Plain", (L.Layer,), {})
    assert handlers.handler_for(plain) is None


def test_subclass_of_dense_uses_dense_handler_unless_it_has_its_own():
    class MyDense(L.Dense):
        pass

    class OwnDense(L.Dense):
        pass

    own = kp.LayerHandler(prunable=lambda layer: [layer.bias])
    kp.register_handler(OwnDense, own)
    assert handlers.handler_for(MyDense(2)) is handlers.handler_for(L.Dense(2))
    assert handlers.handler_for(OwnDense(2)) is own
    mine, theirs = MyDense(2, name="mine"), OwnDense(2, name="theirs")
    mine.build((None, 3))
    theirs.build((None, 3))
    assert [w.path for w in registry.prunable_weights(mine)] == ["mine/kernel"]
    assert [w.path for w in registry.prunable_weights(theirs)] == ["theirs/bias"]
    assert not registry.has_rule(L.BatchNormalization())  # a handler without prunable weights


def test_prunable_layer_declaration_wins_over_the_handler():
    class Declared(L.Dense, kp.PrunableLayer):
        def get_prunable_weights(self):
            return [self.bias]

    layer = Declared(2, name="declared")
    layer.build((None, 3))
    assert [w.path for w in registry.prunable_weights(layer)] == ["declared/bias"]
    assert handlers.handler_for(layer).width_key == "units"  # the rest still comes from Dense


def test_handler_folds_batchnorm_only_when_it_says_so():
    inputs = keras.Input((4,))
    x = Linear(3, name="lin")(inputs)
    model = keras.Model(inputs, L.BatchNormalization(name="bn")(x))
    assert foldable_batchnorms(model) == {}


@pytest.mark.parametrize(
    "layer_class, handler, error, match",
    [
        (object, LINEAR, TypeError, "layer_class.*keras.layers.Layer"),
        (L.Dense(2), LINEAR, TypeError, "layer_class.*keras.layers.Layer"),
        (Linear, {"prunable": None}, TypeError, "handler.*LayerHandler"),
        (Linear, None, TypeError, "handler.*LayerHandler"),
    ],
)
def test_bad_registration_is_refused(layer_class, handler, error, match):
    with pytest.raises(error, match=match):
        kp.register_handler(layer_class, handler)
    assert handlers.handler_for(Linear) is LINEAR


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"prunable": "kernel"}, TypeError, "prunable.*callable"),
        ({"flops": 3}, TypeError, "flops.*callable"),
        ({"channel_axes": ["w"]}, TypeError, "channel_axes.*mapping"),
        ({"channel_axes": {"w": "in"}, "width_key": "units"}, TypeError, "channel_axes"),
        ({"channel_axes": {"w": ("in", "rows")}, "width_key": "units"}, ValueError, "'rows'"),
        ({"channel_axes": {"w": ("in", "out")}}, ValueError, "width_key"),
        ({"width_key": "units"}, ValueError, "width_key.*channel_axes"),
        ({"width_key": 3, "channel_axes": {"w": ("in", "out")}}, TypeError, "width_key"),
        ({"fold_kernels": -1}, ValueError, "fold_kernels"),
        ({"trace": "magic"}, ValueError, "trace"),
    ],
)
def test_bad_handler_is_refused(kwargs, error, match):
    with pytest.raises(error, match=match):
        kp.LayerHandler(**kwargs)
