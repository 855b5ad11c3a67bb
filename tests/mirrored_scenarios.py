"""Pruning under ``tf.distribute.MirroredStrategy`` on two logical CPU devices.

Run as ``python -m tests.mirrored_scenarios NAME [FOLDER]`` in a fresh process: logical
devices can only be set before TensorFlow starts. Each scenario checks its own facts with
``assert`` and prints ``OK`` last; tests/test_mirrored.py runs them.
"""

import sys

import numpy as np
import tensorflow as tf

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2
)

import keras  # noqa: E402  (after the devices are set)

import keras_prune as kp  # noqa: E402

STRATEGY = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
SCHEDULE = kp.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=24, frequency=4)


def data(n=512):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 16)).astype("float32")
    return x, (np.abs(x[:, :3]).argmax(axis=1)).astype("int64")


def build():
    model = keras.Sequential([
        keras.Input((16,)),
        keras.layers.Dense(32, activation="relu", name="hidden"),
        keras.layers.Dense(3, name="logits"),
    ])
    pruned = kp.prune_low_magnitude(model, SCHEDULE)
    pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return pruned


def replicas(variable) -> list[np.ndarray]:
    """Every replica's copy of ``variable``."""
    return [copy.numpy() for copy in variable.value.values]


class ReplicasAgree(keras.callbacks.Callback):
    """After every step: each replica holds the same weights and masks, pruned weights are 0.0."""

    def __init__(self, pruned):
        super().__init__()
        self.pruned, self.steps = pruned, 0

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        for weight, mask in zip(self.pruned.prunable_weights(), self.pruned.mask_variables):
            weights, masks = replicas(weight), replicas(mask)
            assert len(weights) == 2, "not mirrored"
            for copy, keep in zip(weights, masks):
                np.testing.assert_array_equal(keep, masks[0], err_msg=f"masks differ at step {self.steps}")
                np.testing.assert_array_equal(copy, weights[0], err_msg=f"replicas differ at step {self.steps}")
                assert not copy[keep == 0].any(), f"{weight.path}: a pruned weight moved at step {self.steps}"


def check_exact_sparsity(pruned, sparsity=0.8):
    for weight in pruned.prunable_weights():
        for copy in replicas(weight):
            assert np.sum(copy == 0) == round(sparsity * copy.size), (weight.path, np.mean(copy == 0))


def train():
    with STRATEGY.scope():
        pruned = build()
    check = ReplicasAgree(pruned)
    pruned.fit(*data(), epochs=4, batch_size=64, callbacks=[kp.UpdatePruningStep(), check], verbose=0)
    assert check.steps == 32
    check_exact_sparsity(pruned)


def resume(folder):
    """Saved mid-pruning under the strategy and loaded in its scope, it ends as one run ends."""
    x, y = data()
    fit = dict(batch_size=64, shuffle=False, verbose=0)
    keras.utils.set_random_seed(0)
    with STRATEGY.scope():
        whole = build()
    whole.fit(x, y, epochs=4, callbacks=[kp.UpdatePruningStep()], **fit)

    keras.utils.set_random_seed(0)
    with STRATEGY.scope():
        first = build()
    first.fit(x, y, epochs=2, callbacks=[kp.UpdatePruningStep()], **fit)
    first.save(f"{folder}/pruned.keras")
    with STRATEGY.scope():
        again = keras.saving.load_model(f"{folder}/pruned.keras")
    assert int(replicas(again.pruning_step)[0]) == 16
    check = ReplicasAgree(again)
    again.fit(x, y, epochs=2, callbacks=[kp.UpdatePruningStep(), check], **fit)
    check_exact_sparsity(again)
    for expected, resumed in zip(whole.masks(), again.masks()):
        np.testing.assert_array_equal(expected, resumed)
    for expected, resumed in zip(whole.prunable_weights(), again.prunable_weights()):
        np.testing.assert_allclose(replicas(expected)[0], replicas(resumed)[0], atol=1e-5)


def outside_scope():
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(4)])
    with STRATEGY.scope():
        try:
            kp.prune_low_magnitude(model, SCHEDULE)
        except ValueError as error:
            assert "strategy.scope()" in str(error), error
        else:
            raise AssertionError("pruning a model built outside the strategy scope was accepted")


def several_steps_per_execution():
    with STRATEGY.scope():
        pruned = build()
        pruned.compile("adam", "sparse_categorical_crossentropy", steps_per_execution=4)
    try:
        pruned.fit(*data(), epochs=1, batch_size=64, callbacks=[kp.UpdatePruningStep()], verbose=0)
    except ValueError as error:
        assert "steps_per_execution=1" in str(error), error
    else:
        raise AssertionError("several steps per execution under a strategy were accepted")


if __name__ == "__main__":
    name, *args = sys.argv[1:]
    keras.utils.set_random_seed(0)
    globals()[name](*args)
    print("OK")
