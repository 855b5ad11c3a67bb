"""prune_channels: coupled groups are removed together, and zero channels leave outputs equal."""

import keras
import numpy as np
import pytest
from keras import layers as L

from keras_prune.structured import (
    ChannelGraph,
    apply_plan,
    plan_channels,
    prune_channels,
    zero_removed,
)

pytestmark = pytest.mark.core


def _randomize(model, seed=0):
    """Random weights everywhere, including BatchNorm statistics, so nothing is trivially 0."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        value = rng.normal(size=variable.shape).astype("float32")
        if "variance" in variable.path:
            value = np.abs(value) + 0.5
        variable.assign(value)
    return model


def _outputs(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


def _residual():
    x = keras.Input((8, 8, 3))
    a = L.ReLU()(L.BatchNormalization()(L.Conv2D(16, 3, padding="same", name="stem")(x)))
    b = L.BatchNormalization()(L.Conv2D(16, 3, padding="same", name="inner")(a))
    c = L.ReLU()(L.Add()([a, b]))
    y = L.Dense(4, name="head")(L.GlobalAveragePooling2D()(c))
    return keras.Model(x, y)


def _concat():
    x = keras.Input((6, 6, 3))
    a = L.Conv2D(8, 3, padding="same", activation="relu", name="left")(x)
    b = L.Conv2D(16, 1, activation="relu", name="right")(x)
    c = L.MaxPooling2D()(L.Concatenate()([a, b]))
    y = L.Dense(3, name="head")(L.GlobalMaxPooling2D()(c))
    return keras.Model(x, y)


def _depthwise_separable():
    x = keras.Input((8, 8, 4))
    a = L.Conv2D(16, 3, padding="same", activation="relu", name="expand")(x)
    b = L.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw")(a)
    b = L.ReLU()(L.BatchNormalization()(b))
    c = L.SeparableConv2D(12, 3, padding="same", activation="relu", name="sep")(b)
    y = L.Dense(2, name="head")(L.GlobalAveragePooling2D()(L.ZeroPadding2D()(c)))
    return keras.Model(x, y)


def _flatten_dense():
    return keras.Sequential([
        keras.Input((6, 6, 2)),
        L.Conv2D(8, 3, activation="relu", name="conv"),
        L.Flatten(),
        L.Dropout(0.5),
        L.Dense(10, activation="sigmoid", name="hidden"),
        L.Dense(3, name="head"),
    ])


def _attention():
    x = keras.Input((5, 8))
    a = L.MultiHeadAttention(num_heads=4, key_dim=3, name="mha")(x, x)
    h = L.Dense(16, activation="gelu", name="ffn_in")(L.LayerNormalization(name="ln")(L.Add()([x, a])))
    y = L.Dense(8, name="ffn_out")(h)
    return keras.Model(x, L.Dense(2, name="head")(L.GlobalAveragePooling1D()(y)))


def _shared_and_reshape():
    x = keras.Input((4, 4, 3))
    conv = L.Conv2D(8, 1, activation="tanh", name="conv")
    shared = L.Dense(6, activation="relu", name="shared")
    a = shared(L.Reshape((16, 8))(conv(x)))
    b = shared(L.Reshape((16, 8))(conv(x)))
    y = L.Dense(2, name="head")(L.Reshape((96,))(L.Add()([a, b])))
    return keras.Model(x, y)


MODELS = {
    "residual": (_residual, (8, 8, 3)),
    "concat": (_concat, (6, 6, 3)),
    "depthwise_separable": (_depthwise_separable, (8, 8, 4)),
    "flatten_dense": (_flatten_dense, (6, 6, 2)),
    "attention": (_attention, (5, 8)),
    "shared_and_reshape": (_shared_and_reshape, (4, 4, 3)),
}


def check_zero_channels_keep_outputs(names):
    """Zero a plan's channels, then remove them: the outputs must not change."""
    for name in names:
        build, shape = MODELS[name]
        model = _randomize(build())
        x = np.random.default_rng(1).normal(size=(3,) + shape).astype("float32")
        plan = plan_channels(model, 0.5)
        assert plan.removed.any(), name
        before_zeroing = _outputs(model, x)
        zero_removed(plan)
        zeroed = _outputs(model, x)
        assert not np.allclose(before_zeroing, zeroed, atol=1e-4), name  # the channels mattered
        small = apply_plan(plan)
        assert small.count_params() < model.count_params(), name
        np.testing.assert_allclose(_outputs(small, x), zeroed, atol=1e-4, rtol=1e-4, err_msg=name)


def test_removing_zero_channels_keeps_outputs():
    # The other architectures: test_structured_equivalence.py (building models is slow on
    # JAX, so only these two run in the backend-agnostic core suite).
    check_zero_channels_keep_outputs(["residual", "attention"])


def test_residual_add_couples_both_convolutions():
    model = _randomize(_residual())
    small = prune_channels(model, 0.5)
    assert small.get_layer("stem").filters == small.get_layer("inner").filters == 8
    assert small.get_layer("head").kernel.shape == (8, 4)
    assert small.get_layer("head").units == 4  # the output layer is kept


def test_concatenate_prunes_each_input_and_slices_the_consumer():
    small = prune_channels(_randomize(_concat()), 0.5)
    assert (small.get_layer("left").filters, small.get_layer("right").filters) == (4, 8)
    assert small.get_layer("head").kernel.shape == (12, 3)


def test_depthwise_follows_its_input_and_separable_prunes_its_output():
    small = prune_channels(_randomize(_depthwise_separable()), 0.5)
    assert small.get_layer("expand").filters == 8
    assert small.get_layer("dw").kernel.shape == (3, 3, 8, 2)
    assert small.get_layer("sep").depthwise_kernel.shape == (3, 3, 16, 1)
    assert small.get_layer("sep").pointwise_kernel.shape == (1, 1, 16, 6)


def test_flatten_removes_the_rows_of_every_spatial_position():
    model = _randomize(_flatten_dense())
    plan = plan_channels(model, 0.5)
    kept = plan.keep_mask("conv", "out")
    small = apply_plan(plan)
    expected = keras.ops.convert_to_numpy(model.get_layer("hidden").kernel).reshape(4, 4, 8, 10)
    expected = expected[:, :, kept][..., plan.keep_mask("hidden", "out")].reshape(-1, 5)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(small.get_layer("hidden").kernel),
                                  expected)


def test_attention_heads_are_pruned_as_units():
    small = prune_channels(_randomize(_attention()), 0.5)
    mha = small.get_layer("mha")
    assert mha.num_heads == 2
    assert mha.query_dense.kernel.shape == (8, 2, 3)
    assert mha.output_dense.kernel.shape == (2, 3, 8)
    assert small.get_layer("ffn_in").units == 8
    assert small.get_layer("ln").gamma.shape == (8,)  # the residual stream stays
    assert small.get_layer("ffn_out").units == 4


def test_l1_removes_the_weakest_channels():
    model = _randomize(keras.Sequential([keras.Input((4,)), L.Dense(6, name="a"), L.Dense(2)]))
    kernel = keras.ops.convert_to_numpy(model.get_layer("a").kernel)
    kernel[:, [1, 4]] *= 1e-3
    model.get_layer("a").kernel.assign(kernel)
    plan = plan_channels(model, 2 / 6, importance="l1")
    assert plan.keep_mask("a", "out").tolist() == [True, False, True, True, False, True]
    assert plan_channels(model, 2 / 6, importance="l2").removed.tolist() == plan.removed.tolist()


def test_bn_scale_removes_the_smallest_gamma():
    model = _randomize(_residual())
    bn = [layer for layer in model.layers if isinstance(layer, L.BatchNormalization)]
    gamma = np.ones(16, "float32")
    gamma[[3, 7]] = 1e-4
    for layer in bn:
        layer.gamma.assign(gamma)
    plan = plan_channels(model, 2 / 16, importance="bn_scale")
    assert np.flatnonzero(~plan.keep_mask("stem", "out")).tolist() == [3, 7]


def test_round_to_and_never_removing_every_channel():
    model = keras.Sequential([keras.Input((4,)), L.Dense(64, name="a"), L.Dense(3, name="b"),
                              L.Dense(2)])
    assert prune_channels(model, 0.3, round_to=8).get_layer("a").units == 48
    assert prune_channels(model, 0.3, round_to=8).get_layer("b").units == 3  # < round_to: kept
    tiny = prune_channels(model, 0.99)
    assert (tiny.get_layer("a").units, tiny.get_layer("b").units) == (1, 1)


def test_global_scope_prunes_the_weaker_layer_more():
    model = _randomize(keras.Sequential([keras.Input((8,)), L.Dense(16, name="a"),
                                         L.Dense(16, name="b"), L.Dense(2)]))
    kernel = keras.ops.convert_to_numpy(model.get_layer("b").kernel)
    kernel[:, :12] *= 1e-3
    model.get_layer("b").kernel.assign(kernel)
    small = prune_channels(model, 0.4, scope="global")
    assert small.get_layer("b").units < small.get_layer("a").units
    assert small.get_layer("b").units + small.get_layer("a").units == 32 - round(0.4 * 32)


def test_exclude_and_unknown_layers_are_left_untouched_and_reported():
    class Scale(keras.layers.Layer):  # no channel rule: the graph must not guess
        def call(self, x):
            return x * 2.0

    x = keras.Input((4,))
    a = L.Dense(8, name="a")(x)
    b = L.Dense(8, name="b")(Scale(name="scale")(a))
    d = L.Dense(8, name="d")(b)
    y = L.Dense(2)(L.Dense(8, name="c")(d))
    model = keras.Model(x, y)
    plan = plan_channels(model, 0.5, exclude=["c"])
    small = apply_plan(plan)
    assert small.get_layer("a").units == 8 and "scale" in plan.graph.unknown
    assert small.get_layer("b").units == 4
    assert small.get_layer("d").units == 8  # feeds the excluded layer
    assert small.get_layer("c").units == 8
    assert "excluded" in plan.summary() and "left untouched" in plan.summary()


def test_softmax_across_channels_blocks_the_group():
    model = keras.Sequential([keras.Input((4,)), L.Dense(8, activation="softmax", name="a"),
                              L.Dense(2)])
    assert prune_channels(model, 0.5).get_layer("a").units == 8


def test_input_model_is_not_modified_and_result_round_trips(tmp_path):
    model = _randomize(_residual())
    weights = [keras.ops.convert_to_numpy(w) for w in model.weights]
    small = prune_channels(model, 0.5)
    for before, variable in zip(weights, model.weights):
        np.testing.assert_array_equal(before, keras.ops.convert_to_numpy(variable))
    small.save(tmp_path / "small.keras")
    loaded = keras.saving.load_model(tmp_path / "small.keras")
    x = np.ones((1, 8, 8, 3), "float32")
    np.testing.assert_allclose(_outputs(loaded, x), _outputs(small, x), atol=1e-6)


BAD_ARGUMENTS = [
    ({"ratio": 1.5}, ValueError, "Argument `ratio` must be in [0, 1). Received: ratio=1.5"),
    ({"ratio": "half"}, TypeError, "Argument `ratio` must be a number"),
    ({"ratio": 0.5, "importance": "l3"}, ValueError, "Argument `importance` must be one of"),
    ({"ratio": 0.5, "round_to": 0}, ValueError, "Argument `round_to` must be >= 1"),
    ({"ratio": 0.5, "exclude": ["nope"]}, ValueError, "does not have: ['nope']"),
    ({"ratio": 0.5, "importance": "taylor"}, ValueError, "`calibration_data` is required"),
]


def test_bad_arguments_raise_with_the_fix():
    model = keras.Sequential([keras.Input((4,)), L.Dense(8), L.Dense(2)])
    model.compile(loss="mse")
    for kwargs, error, message in BAD_ARGUMENTS:
        with pytest.raises(error) as info:
            prune_channels(model, **kwargs)
        assert message in str(info.value)


def test_models_without_known_inputs_are_rejected():
    with pytest.raises(ValueError, match="built Sequential or functional"):
        ChannelGraph(keras.Sequential([L.Dense(4)]))
    with pytest.raises(TypeError, match="must be a keras.Model"):
        ChannelGraph(L.Dense(4))


def test_taylor_scores_follow_the_loss_gradient():
    model = _randomize(keras.Sequential([keras.Input((4,)), L.Dense(6, name="a"), L.Dense(1)]))
    last = keras.ops.convert_to_numpy(model.layers[-1].kernel)
    last[[2, 5]] = 0.0  # units 2 and 5 cannot change the loss: zero gradient on their column
    model.layers[-1].kernel.assign(last)
    model.compile(loss="mse")
    x = np.random.default_rng(2).normal(size=(32, 4)).astype("float32")
    y = np.ones((32, 1), "float32")
    plan = plan_channels(model, 2 / 6, importance="taylor", calibration_data=(x, y))
    assert np.flatnonzero(~plan.keep_mask("a", "out")).tolist() == [2, 5]
    assert (plan.scores[[0, 1, 3, 4]] > 0).all()


def test_taylor_needs_a_compiled_loss():
    model = keras.Sequential([keras.Input((4,)), L.Dense(6), L.Dense(1)])
    data = (np.zeros((4, 4), "float32"), np.zeros((4, 1), "float32"))
    with pytest.raises(ValueError, match="compiled with a single loss"):
        plan_channels(model, 0.5, importance="taylor", calibration_data=data)


def test_token_inputs_of_any_length_and_embeddings():
    tokens = keras.Input((None,), dtype="int32")
    h = L.Embedding(50, 16, name="embed")(tokens)
    h = L.Dense(32, activation="relu", name="hidden")(h)
    model = keras.Model(tokens, L.Dense(2, name="head")(L.GlobalAveragePooling1D()(h)))
    model = _randomize(model)
    plan = plan_channels(model, 0.5)
    zero_removed(plan)
    small = apply_plan(plan)
    assert (small.get_layer("embed").output_dim, small.get_layer("hidden").units) == (8, 16)
    x = np.array([[1, 5, 7, 2, 9]], "int32")
    np.testing.assert_allclose(_outputs(small, x), _outputs(model, x), atol=1e-5)
