"""prune_low_magnitude / strip_pruning on every supported layer and model kind, and bad input."""

from collections import Counter

import keras
import numpy as np
import pytest

import keras_prune as kp
import keras_prune.compat.tfmot as tfmot
from keras_prune import masks
from keras_prune.callbacks import collect_pruning

from helpers import compile_classifier, dense_data, mlp

pytestmark = pytest.mark.core
L = keras.layers


def image_model():
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 3, name="conv2d")(inputs)
    x = L.DepthwiseConv2D(3, name="depthwise2d")(x)
    x = L.SeparableConv2D(4, 3, padding="same", name="separable2d")(x)
    x = L.Conv2DTranspose(3, 3, name="conv2d_transpose")(x)
    x = L.BatchNormalization(name="bn")(x)
    x = L.Flatten()(x)
    x = L.Dense(6, name="dense")(x)
    outputs = L.EinsumDense("ab,bc->ac", output_shape=3, name="einsum")(x)
    return keras.Model(inputs, outputs, name="image")


def sequence_model():
    inputs = keras.Input((6,), dtype="int32")
    x = L.Embedding(20, 8, name="embedding")(inputs)
    x = L.Conv1D(8, 3, padding="same", name="conv1d")(x)
    x = L.DepthwiseConv1D(3, padding="same", name="depthwise1d")(x)
    x = L.SeparableConv1D(8, 3, padding="same", name="separable1d")(x)
    x = L.Conv1DTranspose(8, 3, padding="same", name="conv1d_transpose")(x)
    x = L.SimpleRNN(8, return_sequences=True, name="simple_rnn")(x)
    x = L.Bidirectional(L.LSTM(4, return_sequences=True), name="bilstm")(x)
    x = L.GRU(8, return_sequences=True, name="gru")(x)
    cells = L.StackedRNNCells([L.LSTMCell(8), L.GRUCell(8)])
    x = L.RNN(cells, return_sequences=True, name="stacked_rnn")(x)
    x = L.TimeDistributed(L.Dense(8), name="time_distributed")(x)
    x = L.MultiHeadAttention(2, 4, name="attention")(x, x)
    x = L.GlobalAveragePooling1D()(x)
    outputs = L.Dense(3, name="head")(x)
    return keras.Model(inputs, outputs, name="sequence")


def volume_model():
    video = keras.Input((3, 6, 6, 2))
    x = L.ConvLSTM2D(3, 3, return_sequences=True, name="conv_lstm2d")(video)
    x = L.TimeDistributed(L.Flatten())(x)
    x = L.ConvLSTM1D(2, 3, name="conv_lstm1d")(L.Reshape((3, 48, 1))(x)[..., 0:1])
    a = L.Flatten()(x)
    cube = keras.Input((4, 4, 4, 1))
    y = L.Conv3D(2, 3, name="conv3d")(cube)
    y = L.Conv3DTranspose(2, 3, name="conv3d_transpose")(y)
    b = L.Flatten()(y)
    outputs = L.Dense(3, name="out")(L.Concatenate()([a, b]))
    return keras.Model([video, cube], outputs, name="volume")


def random_inputs(model, n=16):
    rng = np.random.default_rng(0)
    out = []
    for spec in model.inputs:
        shape = (n,) + tuple(spec.shape[1:])
        out.append(rng.integers(0, 20, shape).astype("int32") if "int" in spec.dtype
                   else rng.normal(size=shape).astype("float32"))
    return out if len(out) > 1 else out[0]


EXPECTED_PRUNED = {
    "image": ["conv2d", "depthwise2d", "separable2d", "conv2d_transpose", "dense", "einsum"],
    "sequence": ["embedding", "conv1d", "depthwise1d", "separable1d", "conv1d_transpose",
                 "simple_rnn", "bilstm", "gru", "stacked_rnn", "time_distributed", "attention", "head"],
    "volume": ["conv_lstm2d", "conv_lstm1d", "conv3d", "conv3d_transpose", "out"],
}
WEIGHT_COUNTS = {"separable2d": 2, "separable1d": 2, "simple_rnn": 2, "bilstm": 4, "gru": 2,
                 "stacked_rnn": 4, "attention": 4, "conv_lstm2d": 2, "conv_lstm1d": 2}


@pytest.mark.parametrize("build", [image_model, sequence_model, volume_model])
def test_every_supported_layer_is_pruned_to_the_exact_count(build):
    model = build()
    config = model.get_config()
    pruned = kp.prune_low_magnitude(model, kp.ConstantSparsity(0.6, 0, frequency=1000))
    assert isinstance(pruned, kp.PrunedModel) and pruned.layer is model
    assert sorted(pruned.pruned_layers) == sorted(EXPECTED_PRUNED[model.name])
    counts = Counter(path for path, _ in pruned.pruned_weights())
    assert counts == {name: WEIGHT_COUNTS.get(name, 1) for name in EXPECTED_PRUNED[model.name]}
    x = random_inputs(model)
    y = np.arange(16) % 3
    compile_classifier(pruned, "sgd")
    pruned.fit(x, y, epochs=1, batch_size=8, callbacks=[kp.UpdatePruningStep()], verbose=0)
    for weight in pruned.prunable_weights():
        values = keras.ops.convert_to_numpy(weight)
        expected = masks.prune_count(0.6, values.size) / values.size
        assert np.mean(values == 0) == pytest.approx(expected), weight.path
    prediction = pruned.predict(x, verbose=0)
    stripped = kp.strip_pruning(pruned)
    assert stripped is model and stripped.get_config() == config
    assert all(w.constraint is None for w in stripped.weights)
    np.testing.assert_allclose(stripped.predict(x, verbose=0), prediction, rtol=0, atol=0)


def test_model_is_pruned_in_place_and_unchanged_until_trained():
    model = mlp()
    before = [w.copy() for w in model.get_weights()]
    pruned = kp.prune_low_magnitude(model, kp.ConstantSparsity(0.9, 0))
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    x, y = dense_data()
    compile_classifier(pruned).fit(x, y, epochs=1, callbacks=[kp.UpdatePruningStep()], verbose=0)
    kernel = keras.ops.convert_to_numpy(model.layers[0].kernel)  # the model's own variables trained
    assert np.mean(kernel == 0) == masks.prune_count(0.9, kernel.size) / kernel.size
    kp.strip_pruning(pruned)
    assert model.layers[0].kernel.constraint is None


def test_tfmot_path_wraps_the_original_layers_as_tfmot_does():
    model = mlp()
    before = [w.copy() for w in model.get_weights()]
    pruned = tfmot.sparsity.keras.prune_low_magnitude(model, tfmot.sparsity.keras.ConstantSparsity(0.9, 0, frequency=1))
    assert pruned is not model and pruned.layers[0].layer is model.layers[0]  # the same layer and variables
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(pruned.layers[0].layer.kernel), before[0])
    x, y = dense_data()
    compile_classifier(pruned).fit(x, y, epochs=1, callbacks=[kp.UpdatePruningStep()], verbose=0)
    kernel = keras.ops.convert_to_numpy(model.layers[0].kernel)  # trained through the wrapper
    assert np.mean(kernel == 0) == pytest.approx(0.9, abs=0.01)
    stripped = tfmot.sparsity.keras.strip_pruning(pruned)
    assert stripped.layers[0] is model.layers[0] and model.layers[0].kernel.constraint is None


def test_nested_models_are_pruned_recursively():
    inner = keras.Sequential([keras.Input((16,)), L.Dense(8, name="inner_dense")], name="inner")
    inputs = keras.Input((16,))
    outputs = L.Dense(3, name="outer_dense")(inner(inputs))
    model = keras.Model(inputs, outputs)
    config = model.get_config()
    pruned = kp.prune_low_magnitude(model, kp.ConstantSparsity(0.5, 0))
    assert pruned.pruned_layers == ["inner/inner_dense", "outer_dense"]
    x, y = dense_data()
    compile_classifier(pruned).fit(x, y, epochs=1, callbacks=[kp.UpdatePruningStep()], verbose=0)
    stripped = kp.strip_pruning(pruned)
    assert stripped.get_config() == config
    assert np.mean(keras.ops.convert_to_numpy(stripped.get_layer("inner").layers[0].kernel) == 0) == 0.5


class Block(L.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.a = L.Dense(8, activation="relu")
        self.norm = L.LayerNormalization()

    def call(self, x):
        return self.norm(self.a(x))


class Subclassed(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.block = Block()
        self.stack = [L.Dense(8, activation="relu"), L.Dense(8)]
        self.head = L.Dense(3)

    def call(self, x):
        x = self.block(x)
        for layer in self.stack:
            x = layer(x)
        return self.head(x)


def test_subclassed_model_is_pruned_at_any_depth():
    x, y = dense_data()
    model = Subclassed()
    model(x[:2])
    n_weights = len(model.weights)
    pruned = kp.prune_low_magnitude(model, kp.ConstantSparsity(0.75, 0))
    assert len(pruned.pruned_layers) == 4 and pruned.pruned_layers[0].startswith("block/")
    compile_classifier(pruned).fit(x, y, epochs=1, callbacks=[kp.UpdatePruningStep()], verbose=0)
    for kernel in [model.block.a.kernel, model.stack[0].kernel, model.stack[1].kernel, model.head.kernel]:
        assert np.mean(keras.ops.convert_to_numpy(kernel) == 0) == 0.75
    prediction = pruned.predict(x, verbose=0)
    assert kp.strip_pruning(pruned) is model
    assert len(model.weights) == n_weights and model.head.kernel.constraint is None
    np.testing.assert_array_equal(model.predict(x, verbose=0), prediction)


def test_tfmot_path_swaps_wrappers_into_a_subclassed_model_and_back():
    x, y = dense_data()
    model = Subclassed()
    model(x[:2])
    n_weights = len(model.weights)
    pruned = tfmot.sparsity.keras.prune_low_magnitude(model, tfmot.sparsity.keras.ConstantSparsity(0.75, 0, frequency=1))
    assert pruned is model
    assert len(collect_pruning(model)) == 4
    assert len({id(w) for w in model.weights}) == len(model.weights)
    compile_classifier(model).fit(x, y, epochs=1, callbacks=[kp.UpdatePruningStep()], verbose=0)
    kernels = [model.block.a.layer.kernel, model.stack[0].layer.kernel, model.head.layer.kernel]
    for kernel in kernels:
        assert np.mean(keras.ops.convert_to_numpy(kernel) == 0) == 0.75
    prediction = model.predict(x, verbose=0)
    kp.strip_pruning(model)
    assert not collect_pruning(model)
    assert len(model.weights) == n_weights
    assert isinstance(model.head, L.Dense) and model.head.kernel.constraint is None
    np.testing.assert_array_equal(model.predict(x, verbose=0), prediction)


class Scale(L.Layer):
    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1],), initializer="ones")

    def call(self, x):
        return x * self.w


class PrunableScale(Scale, kp.PrunableLayer):
    def get_prunable_weights(self):
        return [self.w]


def test_custom_layer_without_declaration_is_left_dense_and_refused_when_selected():
    x, _ = dense_data()
    inputs = keras.Input((16,))
    model = keras.Model(inputs, L.Dense(3, name="d")(Scale(name="my_scale")(inputs)))
    with pytest.raises(kp.UnsupportedLayerError, match="my_scale.*PrunableLayer"):
        kp.prune_low_magnitude(model, layers="my_scale")
    assert all(w.constraint is None for w in model.weights)
    pruned = kp.prune_low_magnitude(model)
    assert pruned.pruned_layers == ["d"]
    assert [path for path, _ in pruned.left_dense] == ["my_scale"]
    assert "PrunableLayer" in pruned.left_dense[0][1]


def test_tfmot_path_refuses_a_custom_layer_without_declaration():
    x, _ = dense_data()
    inputs = keras.Input((16,))
    model = keras.Model(inputs, L.Dense(3)(Scale(name="my_scale")(inputs)))
    with pytest.raises(kp.UnsupportedLayerError, match="my_scale.*PrunableLayer"):
        tfmot.sparsity.keras.prune_low_magnitude(model)
    class WithScale(Subclassed):
        def __init__(self):
            super().__init__()
            self.extra = Scale()

        def call(self, x):
            return super().call(self.extra(x))

    subclassed = WithScale()
    subclassed(x[:2])
    with pytest.raises(kp.UnsupportedLayerError):
        tfmot.sparsity.keras.prune_low_magnitude(subclassed)
    assert not collect_pruning(subclassed)


def test_policy_can_exclude_an_undeclared_custom_layer():
    class SkipScale(kp.PruningPolicy):
        def allow_pruning(self, layer):
            return not isinstance(layer, Scale)

    def make_model():
        inputs = keras.Input((16,))
        return keras.Model(inputs, L.Dense(3, name="d")(Scale(name="s")(inputs)))

    pruned = tfmot.sparsity.keras.prune_low_magnitude(make_model(), pruning_policy=SkipScale())
    assert [w.layer.name for w in collect_pruning(pruned)] == ["d"]
    assert kp.prune_low_magnitude(make_model(), layers=SkipScale().allow_pruning).pruned_layers == ["d"]


def test_prunable_layer_declares_its_weights():
    inputs = keras.Input((16,))
    model = keras.Model(inputs, PrunableScale(name="scale")(inputs))
    pruned = kp.prune_low_magnitude(model, kp.ConstantSparsity(0.5, 0))
    assert [(path, w.shape) for path, w in pruned.pruned_weights()] == [("scale", (16,))]


def test_layer_and_list_of_layers():
    wrapped = kp.prune_low_magnitude(L.Dense(3))
    assert isinstance(wrapped, kp.PruneLowMagnitude)
    both = kp.prune_low_magnitude([L.Dense(3), L.Conv2D(2, 3)])
    assert [type(w.layer).__name__ for w in both] == ["Dense", "Conv2D"]
    with pytest.raises(ValueError, match="no prunable weights"):
        kp.prune_low_magnitude(L.BatchNormalization())


def test_clone_function_pattern_prunes_chosen_layers_only():
    model = mlp()

    def clone(layer):
        return kp.prune_low_magnitude(layer) if layer.name == "hidden" else layer

    pruned = keras.models.clone_model(model, clone_function=clone)
    assert [type(layer).__name__ for layer in pruned.layers] == ["PruneLowMagnitude", "Dense"]


def test_pruning_policy_filters_layers():
    class SkipLogits(kp.PruningPolicy):
        def allow_pruning(self, layer):
            return layer.name != "logits"

    pruned = tfmot.sparsity.keras.prune_low_magnitude(mlp(), pruning_policy=SkipLogits())
    assert [type(layer).__name__ for layer in pruned.layers] == ["PruneLowMagnitude", "Dense"]
    with pytest.raises(TypeError, match="layers=.*compat.tfmot"):
        kp.prune_low_magnitude(mlp(), pruning_policy=SkipLogits())


@pytest.mark.parametrize("layers, expected", [
    ("hidden", ["hidden"]), (["logits"], ["logits"]), (lambda layer: layer.name != "hidden", ["logits"]), (None, ["hidden", "logits"]),
])
def test_layers_selects_by_path_list_or_callable(layers, expected):
    assert kp.prune_low_magnitude(mlp(), layers=layers).pruned_layers == expected


@pytest.mark.parametrize("kwargs, error, fragment", [
    (dict(pruning_schedule=0.5), TypeError, "pruning_schedule=0.5"),
    (dict(block_pooling_type="MIN"), ValueError, "block_pooling_type='MIN'"),
    (dict(block_size=(0, 2)), ValueError, "block_size"),
    (dict(sparsity_m_by_n=(4, 2)), ValueError, "sparsity_m_by_n=(4, 2)"),
    (dict(scope="model"), ValueError, "scope='model'"),
    (dict(scope="global", block_size=(2, 2)), ValueError, "cannot be combined"),
    (dict(layers=3), TypeError, "layers=3"),
    (dict(layers="nothing"), ValueError, "layers='nothing'"),
    (dict(layers="("), ValueError, "not a valid regular expression"),
])
def test_bad_arguments_raise_before_anything_changes(kwargs, error, fragment):
    model = mlp()
    with pytest.raises(error) as info:
        kp.prune_low_magnitude(model, **kwargs)
    assert fragment in str(info.value)
    assert all(layer.kernel.constraint is None for layer in model.layers)


def test_not_a_layer_and_already_pruned_are_refused():
    with pytest.raises(TypeError, match="to_prune"):
        kp.prune_low_magnitude("model.keras")
    pruned = kp.prune_low_magnitude(mlp())
    with pytest.raises(ValueError, match="already pruned.*strip_pruning"):
        kp.prune_low_magnitude(pruned)
    with pytest.raises(ValueError, match="already pruned"):
        kp.prune_low_magnitude(pruned.layer)  # the model inside: its weights have masks already
    with pytest.raises(ValueError, match="being pruned gradually.*strip"):
        kp.magnitude_prune(pruned.layer, sparsity=0.5)
    wrapped = tfmot.sparsity.keras.prune_low_magnitude(mlp())
    with pytest.raises(ValueError, match="already pruned"):
        kp.prune_low_magnitude(wrapped.layers[0])
    with pytest.raises(TypeError, match="model"):
        kp.strip_pruning(np.zeros(3))


def test_training_without_the_callback_is_a_clear_error():
    pruned = compile_classifier(kp.prune_low_magnitude(mlp()))
    x, y = dense_data()
    with pytest.raises(ValueError, match="UpdatePruningStep"):
        pruned.fit(x, y, epochs=1, verbose=0)


def test_weights_changed_outside_training_are_refused_before_the_next_fit():
    model = mlp()
    pruned = compile_classifier(kp.prune_low_magnitude(model, kp.ConstantSparsity(0.5, 0)))
    x, y = dense_data()
    pruned.fit(x, y, epochs=1, callbacks=[kp.UpdatePruningStep()], verbose=0)
    hidden = model.get_layer("hidden")
    hidden.kernel.assign(np.ones(hidden.kernel.shape, "float32"))  # e.g. load_weights of a dense model
    with pytest.raises(ValueError, match="hidden/kernel.*masks are out of date.*strip_pruning"):
        pruned.fit(x, y, epochs=1, callbacks=[kp.UpdatePruningStep()], verbose=0)
    assert np.all(keras.ops.convert_to_numpy(hidden.kernel) == 1)  # refused before any step
    pruned.apply_masks()
    pruned.fit(x, y, epochs=1, callbacks=[kp.UpdatePruningStep()], verbose=0)
    kernel = keras.ops.convert_to_numpy(hidden.kernel)
    assert np.mean(kernel == 0) == masks.prune_count(0.5, kernel.size) / kernel.size


def test_training_the_model_inside_instead_of_the_pruned_model_is_a_clear_error():
    model = compile_classifier(mlp())
    pruned = kp.prune_low_magnitude(model)
    assert pruned.get_layer("hidden") is model.get_layer("hidden")
    x, y = dense_data()
    with pytest.raises(ValueError, match="held by the pruned model.*train that one"):
        model.fit(x, y, epochs=1, callbacks=[kp.UpdatePruningStep()], verbose=0)
    kp.strip_pruning(pruned)
    model.fit(x, y, epochs=1, callbacks=[kp.UpdatePruningStep()], verbose=0)  # a plain model again
