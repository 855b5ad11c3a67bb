"""iterative_prune: exact final sparsity with masks held, per-round history, the budget."""

import keras
import numpy as np
import pytest

from keras_prune import iterative_prune
from keras_prune.iterative import round_sparsities
from keras_prune.masks import prune_count

from helpers import GatedBlock, block_model

pytestmark = pytest.mark.core


def data(n=128):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 8)).astype("float32")
    return x, (x[:, 0] + x[:, 1] > 0).astype("int64")


def compiled(model):
    # Eager steps: on data this small, tracing a graph per round would cost more than training.
    model.compile(keras.optimizers.Adam(0.02), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"], run_eagerly=True)
    return model


def untrained():
    return compiled(keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="relu", name="hidden"),
         keras.layers.Dense(2, name="logits")]
    ))


def trained():
    model = untrained()
    x, y = data()
    model.fit(x, y, epochs=4, batch_size=64, verbose=0)
    return model


def kernels(model):
    return [keras.ops.convert_to_numpy(model.get_layer(n).kernel) for n in ("hidden", "logits")]


def test_round_sparsities_prune_a_constant_fraction_of_survivors():
    rounds = round_sparsities(0.96, 2)
    assert rounds == pytest.approx([0.8, 0.96])
    survivors = [1.0] + [1 - s for s in rounds]
    assert survivors[1] / survivors[0] == pytest.approx(survivors[2] / survivors[1])


def test_final_sparsity_is_exact_after_fine_tuning_and_input_is_untouched():
    model = untrained()
    before = kernels(model)
    x, y = data()
    report = iterative_prune(model, (x, y), validation_data=(x, y), sparsity=0.75, steps=2,
                             epochs_per_step=2, batch_size=64)
    hidden, logits = kernels(report.model)
    assert np.count_nonzero(hidden == 0) == prune_count(0.75, 128)
    assert np.count_nonzero(logits == 0) == prune_count(0.75, 32)
    for old, new in zip(before, kernels(model)):
        np.testing.assert_array_equal(old, new)
    assert [h["round"] for h in report.history] == [1, 2]
    assert report.history[0]["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert report.history[1]["sparsity"] == pytest.approx(0.75, abs=0.01)
    assert all("accuracy" in h and "loss" in h for h in report.history)
    assert report.settings["stopped_by_budget"] is False and "dense_accuracy" in report.settings
    # The survivors were fine-tuned: some kept weight changed after the last pruning round.
    assert not np.array_equal(hidden[hidden != 0], before[0][hidden != 0])


def test_zeros_of_earlier_rounds_stay_zero():
    model = untrained()
    x, y = data()
    first = iterative_prune(model, (x, y), validation_data=(x, y), sparsity=0.5, steps=1,
                            epochs_per_step=1, batch_size=64, layers="hidden")
    zeros_before = kernels(first.model)[0] == 0
    compiled(first.model)
    second = iterative_prune(first.model, (x, y), validation_data=(x, y), sparsity=0.75, steps=1,
                             epochs_per_step=1, batch_size=64, layers="hidden")
    hidden, logits = kernels(second.model)
    assert (hidden[zeros_before] == 0).all() and np.count_nonzero(hidden == 0) == 96
    assert np.count_nonzero(logits == 0) == 0  # not selected


def test_budget_returns_the_last_model_within_budget():
    model = trained()
    x, y = data()
    report = iterative_prune(model, (x, y), validation_data=(x, y), sparsity=0.99, steps=4,
                             epochs_per_step=0, max_drop=0.02, batch_size=64)
    dense = report.settings["dense_accuracy"]
    assert report.settings["stopped_by_budget"] is True
    assert dense - report.history[-1]["accuracy"] > 0.02  # the round that broke the budget
    within = [h for h in report.history[:-1]]
    sparsity = np.mean(np.concatenate([k.ravel() for k in kernels(report.model)]) == 0)
    assert sparsity == pytest.approx(within[-1]["sparsity"] if within else 0.0)


def test_bad_arguments():
    model = untrained()
    x, y = data()
    common = dict(validation_data=(x, y), steps=1)
    with pytest.raises(ValueError, match="sparsity=1.5"):
        iterative_prune(model, (x, y), sparsity=1.5, **common)
    with pytest.raises(ValueError, match="steps"):
        iterative_prune(model, (x, y), sparsity=0.5, validation_data=(x, y), steps=0)
    with pytest.raises(ValueError, match="max_drop"):
        iterative_prune(model, (x, y), sparsity=0.5, max_drop=-1, **common)
    with pytest.raises(ValueError, match="metric"):
        iterative_prune(model, (x, y), sparsity=0.5, metric="auc", **common)
    uncompiled = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="must be compiled"):
        iterative_prune(uncompiled, (x, y), sparsity=0.5, **common)
    with pytest.raises(TypeError, match="needs the final sparsity"):
        iterative_prune(model, (x, y), **common)
    with pytest.raises(TypeError, match="once, as `sparsity`"):
        iterative_prune(model, (x, y), sparsity=0.5, target_sparsity=0.5, **common)
    with pytest.raises(ValueError, match="sparsity=1.5"):  # the earlier name still works
        iterative_prune(model, (x, y), target_sparsity=1.5, **common)


def test_layers_inside_a_custom_layer_are_pruned_exactly_and_input_is_untouched():
    model = compiled(block_model(features=8, classes=2))
    before = [keras.ops.convert_to_numpy(w).copy() for w in model.weights]
    x, y = data()
    report = iterative_prune(model, (x, y), validation_data=(x, y), sparsity=0.75, steps=2,
                             epochs_per_step=1, batch_size=64, layers="block/")
    out = report.model
    assert type(out) is type(model) and out is not model
    block = out.get_layer("block")
    assert isinstance(block, GatedBlock)
    for weight in (block.up.kernel, block.down.kernel):  # inside the custom layer
        values = keras.ops.convert_to_numpy(weight)
        assert np.count_nonzero(values == 0) == prune_count(0.75, values.size), weight.path
        assert weight.constraint is None  # no pruning state left on the returned model
    for name in ("stem", "head"):  # not selected
        assert np.count_nonzero(keras.ops.convert_to_numpy(out.get_layer(name).kernel) == 0) == 0
    assert np.count_nonzero(keras.ops.convert_to_numpy(block.gain) == 0) == 0  # the block's own weight
    for old, new in zip(before, model.weights, strict=True):
        np.testing.assert_array_equal(old, keras.ops.convert_to_numpy(new))
    assert [h["round"] for h in report.history] == [1, 2]
