"""The pruning step is counted inside the train step: batching steps into executions changes nothing."""

import hashlib

import keras
import numpy as np
import pytest

import keras_prune as kp
from keras_prune.cli import main
from keras_prune.io import load_model
from keras_prune.masks import prune_count

from helpers import (
    compile_classifier,
    dense_data,
    mlp,
    prune_functions,
    pruned_kernel,
    pruned_masks,
    pruned_variables,
    pruning_steps,
)

pytestmark = pytest.mark.core

PRUNE = prune_functions()
STATES = {"core": 1, "tfmot": 2}  # one PrunedModel, or a wrapper per pruned layer

SCHEDULE = {"initial_sparsity": 0.0, "final_sparsity": 0.9, "begin_step": 0, "end_step": 40, "frequency": 3}


def train(path, steps_per_execution, **prune_kwargs):
    """Prunes the test MLP on 64 steps (4 epochs of 16 batches); returns its masks and kernels' hash."""
    keras.utils.set_random_seed(0)
    x, y = dense_data()
    pruned = PRUNE[path](mlp(), kp.PolynomialDecay(**SCHEDULE), **prune_kwargs)
    compile_classifier(pruned, steps_per_execution=steps_per_execution)
    pruned.fit(x, y, batch_size=16, epochs=4, verbose=0, callbacks=[kp.UpdatePruningStep()])
    assert pruning_steps(pruned) == [64] * STATES[path]
    keep = pruned_masks(pruned)
    kernels = [keras.ops.convert_to_numpy(w) for w in pruned_variables(pruned)]
    assert len(keep) == len(kernels) == 2
    return keep, hashlib.sha256(b"".join(k.tobytes() for k in kernels)).hexdigest()


@pytest.mark.skipif(keras.backend.backend() == "torch", reason="Keras' torch trainer refuses steps_per_execution > 1")
@pytest.mark.parametrize("path", sorted(PRUNE))
@pytest.mark.parametrize("prune_kwargs", [{}, {"scope": "global"}, {"sparsity_m_by_n": (2, 4)}],
                         ids=["layer", "global", "2:4"])
def test_steps_per_execution_gives_the_masks_of_a_plain_fit(prune_kwargs, path):
    reference, reference_kernels = train(path, 1, **prune_kwargs)
    if not prune_kwargs:
        assert [int(np.count_nonzero(~k)) for k in reference] == [prune_count(0.9, 16 * 24), prune_count(0.9, 24 * 3)]
    for steps_per_execution in (4, 7):
        keep, kernels = train(path, steps_per_execution, **prune_kwargs)
        for a, b in zip(reference, keep):
            np.testing.assert_array_equal(a, b)
        assert kernels == reference_kernels  # the same training, bit for bit


class NoTrainingArgument(keras.Model):
    """A subclassed model whose call() does not take `training`: fit calls it in inference mode."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(24, activation="relu")
        self.head = keras.layers.Dense(3)

    def call(self, x):
        return self.head(self.hidden(x))


def test_a_model_without_training_argument_is_pruned_between_steps():
    # The tfmot path swaps wrappers into the model, whose own call() then runs them in inference mode.
    x, y = dense_data()
    model = NoTrainingArgument()
    model(x[:2])
    PRUNE["tfmot"](model, kp.ConstantSparsity(0.75, 0, frequency=5))
    assert isinstance(model.head, kp.PruneLowMagnitude)
    compile_classifier(model).fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[kp.UpdatePruningStep()])
    assert int(keras.ops.convert_to_numpy(model.head.pruning_step)) == 8
    assert np.mean(keras.ops.convert_to_numpy(model.hidden.layer.kernel) == 0) == 0.75

    if keras.backend.backend() == "torch":
        return  # Keras' torch trainer refuses steps_per_execution > 1 itself
    compile_classifier(model, steps_per_execution=4)
    with pytest.raises(ValueError, match="takes no `training` argument"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[kp.UpdatePruningStep()])


@pytest.mark.parametrize("steps_per_execution", [1, pytest.param(4, marks=pytest.mark.skipif(
    keras.backend.backend() == "torch", reason="Keras' torch trainer refuses steps_per_execution > 1"))])
def test_a_model_without_training_argument_is_pruned_in_training_mode_by_the_core(steps_per_execution):
    # The PrunedModel's own call() takes `training`, so fit counts every step whatever the
    # held model's call() looks like, also with several steps per execution.
    x, y = dense_data()
    model = NoTrainingArgument()
    model(x[:2])
    pruned = kp.prune_low_magnitude(model, kp.ConstantSparsity(0.75, 0, frequency=5))
    assert pruned.layer is model
    assert [id(w) for w in pruned.prunable_weights()] == [id(model.hidden.kernel), id(model.head.kernel)]
    compile_classifier(pruned, steps_per_execution=steps_per_execution)
    pruned.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[kp.UpdatePruningStep()])
    assert pruning_steps(pruned) == [8]
    assert np.mean(keras.ops.convert_to_numpy(model.hidden.kernel) == 0) == 0.75
    assert np.mean(keras.ops.convert_to_numpy(model.head.kernel) == 0) == pytest.approx(
        prune_count(0.75, 24 * 3) / (24 * 3))


@pytest.mark.parametrize("path", sorted(PRUNE))
def test_a_custom_loop_that_forgets_training_mode_is_still_pruned(path):
    x, _ = dense_data()
    pruned = PRUNE[path](mlp(), kp.ConstantSparsity(0.5, 0))
    callback = kp.UpdatePruningStep()
    callback.set_model(pruned)
    callback.on_train_begin()
    for batch in range(3):
        callback.on_train_batch_begin(batch)
        pruned(x[:8])  # the forward pass of a custom loop without training=True
        callback.on_train_batch_end(batch)
    callback.on_train_end()
    for name in ("hidden", "logits"):
        kernel = pruned_kernel(pruned, name)
        assert np.count_nonzero(kernel == 0) == prune_count(0.5, kernel.size)
    assert pruning_steps(pruned) == [3] * STATES[path]


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("path", sorted(PRUNE))
def test_xla_with_several_steps_per_execution_is_refused(path):
    x, y = dense_data()
    pruned = compile_classifier(PRUNE[path](mlp()), jit_compile=True, steps_per_execution=4)
    with pytest.raises(ValueError, match="jit_compile=False, or compile with steps_per_execution=1"):
        pruned.fit(x, y, epochs=1, verbose=0, callbacks=[kp.UpdatePruningStep()])


def test_cli_finetune_of_a_model_saved_with_steps_per_execution(tmp_path, capsys):
    x, y = dense_data()
    np.savez(tmp_path / "data.npz", x_train=x, y_train=y)
    compile_classifier(mlp(), steps_per_execution=8).save(tmp_path / "model.keras")
    code = main([str(a) for a in ("finetune", tmp_path / "model.keras", "--data", tmp_path / "data.npz",
                                  "-o", tmp_path / "out.keras", "--sparsity", "0.9", "--epochs", "3", "--quiet")])
    assert code == 0, capsys.readouterr().err
    out = load_model(tmp_path / "out.keras")
    for layer in out.layers:
        kernel = keras.ops.convert_to_numpy(layer.kernel)
        assert np.count_nonzero(kernel == 0) == prune_count(0.9, kernel.size)


@pytest.mark.parametrize("path", sorted(PRUNE))
@pytest.mark.parametrize("scope", ["layer", "global"])
def test_diverged_weights_stop_training_instead_of_being_pruned_away(scope, path):
    x, y = dense_data()
    model = mlp()
    kernel = keras.ops.convert_to_numpy(model.get_layer("hidden").kernel)
    kernel[0, 0] = np.nan
    model.get_layer("hidden").kernel.assign(kernel)
    pruned = compile_classifier(PRUNE[path](model, kp.ConstantSparsity(0.5, 0), scope=scope))
    with pytest.raises(Exception, match="NaN or infinite values at pruning step 0"):
        pruned.fit(x, y, epochs=1, verbose=0, callbacks=[kp.UpdatePruningStep()])
