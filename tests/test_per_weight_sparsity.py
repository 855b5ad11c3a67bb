"""Per-weight sparsities: magnitude_prune and oneshot_prune take a mapping of weight keys to fractions."""

import keras
import numpy as np
import pytest

from keras_prune import magnitude_prune, oneshot_prune
from keras_prune.masks import prune_count
from keras_prune.oneshot import select_weights, weight_key

pytestmark = pytest.mark.core


def model():
    return keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            keras.layers.Conv2D(4, 3, name="conv"),
            keras.layers.Flatten(),
            keras.layers.Dense(8, activation="relu", name="hidden"),
            keras.layers.Dense(3, name="logits"),
        ],
        name="net",
    )


def zeros(model, name):
    values = keras.ops.convert_to_numpy(model.get_layer(name).kernel)
    return int(values.size - np.count_nonzero(values))


def snapshot(model):
    return [keras.ops.convert_to_numpy(w).copy() for w in model.weights]


def test_keys_name_every_selected_weight():
    net = model()
    keys = [weight_key(path, variable) for path, variable in select_weights(net)]
    assert keys == ["conv/kernel", "hidden/kernel", "logits/kernel"]


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_each_named_weight_gets_its_exact_count_and_others_stay_dense(method):
    net = model()
    x = np.random.default_rng(0).normal(size=(64, 6, 6, 2)).astype("float32")
    amounts = {"conv/kernel": 0.3, "hidden/kernel": 0.9}
    oneshot_prune(net, x, method=method, sparsity=amounts)
    assert zeros(net, "conv") == prune_count(0.3, 72)
    assert zeros(net, "hidden") == prune_count(0.9, 64 * 8)
    assert zeros(net, "logits") == 0


def test_a_mapping_equals_pruning_each_layer_alone_at_its_fraction():
    net, other = model(), model()
    other.set_weights(net.get_weights())
    magnitude_prune(net, sparsity={"conv/kernel": 0.5, "logits/kernel": 0.25})
    magnitude_prune(other, sparsity=0.5, layers=["conv"])
    magnitude_prune(other, sparsity=0.25, layers=["logits"])
    for a, b in zip(net.get_weights(), other.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("sparsity", "scope", "error", "phrase"),
    [
        ({"dense/kernel": 0.5}, "layer", ValueError, "not selected prunable weights"),
        ({"conv/kernel": 1.0}, "layer", ValueError, "sparsity['conv/kernel']"),
        ({"conv/kernel": 0.5}, "global", ValueError, "keep scope='layer'"),
        ({}, "layer", ValueError, "empty mapping"),
        ({3: 0.5}, "layer", TypeError, "weight keys"),
    ],
)
def test_bad_mappings_fail_before_any_weight_changes(sparsity, scope, error, phrase):
    net = model()
    before = snapshot(net)
    with pytest.raises(error) as raised:
        magnitude_prune(net, sparsity=sparsity, scope=scope)
    assert phrase in str(raised.value)
    for a, b in zip(before, snapshot(net)):
        np.testing.assert_array_equal(a, b)


def test_a_mapping_respects_the_layers_filter():
    net = model()
    with pytest.raises(ValueError, match="not selected"):
        magnitude_prune(net, sparsity={"conv/kernel": 0.5}, layers=["hidden"])


def test_iterative_pruning_ramps_each_weight_to_its_own_target():
    from keras_prune import iterative_prune

    net = model()
    net.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6, 6, 2)).astype("float32")
    y = rng.integers(0, 3, size=64)
    amounts = {"conv/kernel": 0.5, "hidden/kernel": 0.875}
    report = iterative_prune(net, (x, y), validation_data=(x, y), sparsity=amounts, steps=3, epochs_per_step=1)
    final = report.model
    assert zeros(final, "conv") == prune_count(0.5, 72)
    assert zeros(final, "hidden") == prune_count(0.875, 512)
    assert zeros(final, "logits") == 0
    overall = (0.5 * 72 + 0.875 * 512) / (72 + 512)
    assert report.settings["target_sparsity"] == pytest.approx(overall)
    assert [round(h["target_sparsity"], 4) for h in report.history][-1] == pytest.approx(overall, abs=1e-4)
    # round 1 of 3 on each weight's geometric ramp: 1 - (1 - s) ** (1/3)
    conv, hidden = 1 - 0.5 ** (1 / 3), 1 - 0.125 ** (1 / 3)
    assert report.history[0]["target_sparsity"] == pytest.approx((conv * 72 + hidden * 512) / 584)


def gradual_setup(schedule):
    from keras_prune import prune_low_magnitude

    net = model()
    pruned = prune_low_magnitude(net, schedule, sparsities={"conv/kernel": 0.5, "hidden/kernel": 0.9})
    pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    return net, pruned, rng.normal(size=(80, 6, 6, 2)).astype("float32"), rng.integers(0, 3, size=80)


def test_gradual_pruning_reaches_each_weights_target_in_step_with_the_schedule(tmp_path):
    from keras_prune import PolynomialDecay, UpdatePruningStep, strip_pruning

    schedule = PolynomialDecay(0.0, 0.8, begin_step=0, end_step=8, power=1, frequency=4)
    net, pruned, x, y = gradual_setup(schedule)
    pruned.fit(x, y, batch_size=16, epochs=1, callbacks=[UpdatePruningStep()], verbose=0)  # steps 0-4
    # at step 4 the schedule is at 0.4, half its final 0.8: each weight at half its own target
    assert zeros(net, "conv") == prune_count(0.25, 72)
    assert zeros(net, "hidden") == prune_count(0.45, 512)
    path = tmp_path / "mid.keras"
    pruned.save(path)
    resumed = keras.saving.load_model(path)
    resumed.fit(x, y, batch_size=16, epochs=2, callbacks=[UpdatePruningStep()], verbose=0)
    final = strip_pruning(resumed)
    assert zeros(final, "conv") == prune_count(0.5, 72)
    assert zeros(final, "hidden") == prune_count(0.9, 512)
    assert zeros(final, "logits") == 0


@pytest.mark.parametrize(
    ("kwargs", "phrase"),
    [
        ({"sparsity_m_by_n": (1, 2)}, "N:M pattern"),
        ({"scope": "global"}, "keep scope='layer'"),
    ],
)
def test_gradual_per_weight_targets_refuse_what_they_cannot_honour(kwargs, phrase):
    from keras_prune import ConstantSparsity, prune_low_magnitude

    with pytest.raises(ValueError, match=phrase):
        prune_low_magnitude(model(), ConstantSparsity(0.5, 0), sparsities={"conv/kernel": 0.5}, **kwargs)
    with pytest.raises(ValueError, match="must end above 0"):
        prune_low_magnitude(model(), ConstantSparsity(0.0, 0), sparsities={"conv/kernel": 0.5})


def test_keys_are_unique_for_layers_holding_several_kernels():
    x = keras.Input((4, 8))
    attention = keras.Model(x, keras.layers.MultiHeadAttention(2, 4, name="mha")(x, x))
    keys = [weight_key(path, variable) for path, variable in select_weights(attention)]
    assert keys == ["mha/query/kernel", "mha/key/kernel", "mha/value/kernel", "mha/attention_output/kernel"]
    magnitude_prune(attention, sparsity={"mha/value/kernel": 0.5})
    value = keras.ops.convert_to_numpy(attention.get_layer("mha")._value_dense.kernel)
    query = keras.ops.convert_to_numpy(attention.get_layer("mha")._query_dense.kernel)
    assert int(value.size - np.count_nonzero(value)) == prune_count(0.5, value.size)
    assert np.count_nonzero(query) == query.size


def test_keys_match_whole_path_segments():
    class Box(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.inner = keras.layers.Dense(2, name="a")

        def call(self, x):
            return self.inner(x)

    x = keras.Input((3,))
    boxed = keras.Model(x, Box(name="data")(x))
    assert [weight_key(path, variable) for path, variable in select_weights(boxed)] == ["data/a/kernel"]


def test_prune_channels_takes_an_allocation_per_layer():
    from keras_prune import allocate, prune_channels

    net = model()
    shares = allocate(net, 0.5, rule="uniform").for_layers()
    assert set(shares) == {"conv", "hidden", "logits"}
    small = prune_channels(net, {"conv": 0.5, "hidden": 0.75})
    assert small.get_layer("conv").filters == 2 and small.get_layer("hidden").units == 2
    assert small.get_layer("logits").units == 3  # the output keeps its channels
    kept = prune_channels(net, {"hidden": 0.5})
    assert kept.get_layer("conv").filters == 4 and kept.get_layer("hidden").units == 4
    with pytest.raises(ValueError, match="does not have"):
        prune_channels(net, {"dense": 0.5})
    with pytest.raises(ValueError, match="keep scope='layer'"):
        prune_channels(net, {"conv": 0.5}, scope="global")
