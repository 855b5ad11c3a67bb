"""The pruning step is counted inside the train step: batching steps into executions changes nothing."""

import hashlib

import keras
import numpy as np
import pytest

import keras_prune as kp
from keras_prune.callbacks import collect_wrappers
from keras_prune.cli import main
from keras_prune.io import load_model
from keras_prune.masks import prune_count

from helpers import compile_classifier, dense_data, mlp

pytestmark = pytest.mark.core

SCHEDULE = {"initial_sparsity": 0.0, "final_sparsity": 0.9, "begin_step": 0, "end_step": 40, "frequency": 3}


def train(steps_per_execution, **prune_kwargs):
    """Prunes the test MLP on 64 steps (4 epochs of 16 batches); returns its masks, as bytes."""
    keras.utils.set_random_seed(0)
    x, y = dense_data()
    pruned = kp.prune_low_magnitude(mlp(), kp.PolynomialDecay(**SCHEDULE), **prune_kwargs)
    compile_classifier(pruned, steps_per_execution=steps_per_execution)
    pruned.fit(x, y, batch_size=16, epochs=4, verbose=0, callbacks=[kp.UpdatePruningStep()])
    wrappers = collect_wrappers(pruned)
    assert [int(keras.ops.convert_to_numpy(w.pruning_step)) for w in wrappers] == [64, 64]
    keep = [k for w in wrappers for k in w.masks()]
    kernels = [keras.ops.convert_to_numpy(w.layer.kernel) for w in wrappers]
    return keep, hashlib.sha256(b"".join(k.tobytes() for k in kernels)).hexdigest()


@pytest.mark.parametrize("prune_kwargs", [{}, {"scope": "global"}, {"sparsity_m_by_n": (2, 4)}],
                         ids=["layer", "global", "2:4"])
def test_steps_per_execution_gives_the_masks_of_a_plain_fit(prune_kwargs):
    reference, reference_kernels = train(1, **prune_kwargs)
    if not prune_kwargs:
        assert [int(np.count_nonzero(~k)) for k in reference] == [prune_count(0.9, 16 * 24), prune_count(0.9, 24 * 3)]
    for steps_per_execution in (4, 7):
        keep, kernels = train(steps_per_execution, **prune_kwargs)
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
    x, y = dense_data()
    model = NoTrainingArgument()
    model(x[:2])
    kp.prune_low_magnitude(model, kp.ConstantSparsity(0.75, 0, frequency=5))
    compile_classifier(model).fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[kp.UpdatePruningStep()])
    assert int(keras.ops.convert_to_numpy(model.head.pruning_step)) == 8
    assert np.mean(keras.ops.convert_to_numpy(model.hidden.layer.kernel) == 0) == 0.75

    compile_classifier(model, steps_per_execution=4)
    with pytest.raises(ValueError, match="takes no `training` argument"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[kp.UpdatePruningStep()])


def test_a_custom_loop_that_forgets_training_mode_is_still_pruned():
    x, _ = dense_data()
    pruned = kp.prune_low_magnitude(mlp(), kp.ConstantSparsity(0.5, 0))
    callback = kp.UpdatePruningStep()
    callback.set_model(pruned)
    callback.on_train_begin()
    for batch in range(3):
        callback.on_train_batch_begin(batch)
        pruned(x[:8])  # the forward pass of a custom loop without training=True
        callback.on_train_batch_end(batch)
    callback.on_train_end()
    hidden = collect_wrappers(pruned)[0]
    kernel = keras.ops.convert_to_numpy(hidden.layer.kernel)
    assert np.count_nonzero(kernel == 0) == prune_count(0.5, kernel.size)
    assert int(keras.ops.convert_to_numpy(hidden.pruning_step)) == 3


@pytest.mark.tensorflow_only
def test_xla_with_several_steps_per_execution_is_refused():
    x, y = dense_data()
    pruned = compile_classifier(kp.prune_low_magnitude(mlp()), jit_compile=True, steps_per_execution=4)
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


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_diverged_weights_stop_training_instead_of_being_pruned_away(scope):
    x, y = dense_data()
    model = mlp()
    kernel = keras.ops.convert_to_numpy(model.get_layer("hidden").kernel)
    kernel[0, 0] = np.nan
    model.get_layer("hidden").kernel.assign(kernel)
    pruned = compile_classifier(kp.prune_low_magnitude(model, kp.ConstantSparsity(0.5, 0), scope=scope))
    with pytest.raises(Exception, match="NaN or infinite values at pruning step 0"):
        pruned.fit(x, y, epochs=1, verbose=0, callbacks=[kp.UpdatePruningStep()])
