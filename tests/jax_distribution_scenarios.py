"""Gradual pruning under Keras' distribution API on JAX, in one process or in two.

``python -m tests.jax_distribution_scenarios NAME [ARGS]`` runs one scenario in a fresh
process, because the device count and the multi-process runtime are set before JAX starts:

* ``data_parallel`` / ``model_parallel``: two forced host devices in one process; the
  pruned model ends as the same model trained on one device (float tolerance).
* ``worker PROCESS_ID PORT FOLDER``: one of two processes on localhost (CPU collectives
  through gloo), ``DataParallel`` over both, data as a ``tf.data.Dataset``; it saves its
  final weights to FOLDER for tests/test_jax_distribution.py to compare.

Each scenario checks its facts with ``assert`` and prints ``OK`` last.
"""

import os
import sys

os.environ["KERAS_BACKEND"] = "jax"
if sys.argv[1] != "worker":
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_prune as kp  # noqa: E402

SCHEDULE = kp.PolynomialDecay(0.0, 0.75, begin_step=0, end_step=12, frequency=3)
SPARSITY = 0.75


def data(n=256):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 16)).astype("float32")
    return x, (np.abs(x[:, :3]).argmax(axis=1)).astype("int64")


class ZerosHeld(keras.callbacks.Callback):
    """Fails at the first step after which a pruned weight is not exactly 0.0."""

    def __init__(self, pruned):
        super().__init__()
        self.pruned, self.steps = pruned, 0

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        for weight, keep in zip(self.pruned.prunable_weights(), self.pruned.masks()):
            assert not keras.ops.convert_to_numpy(weight)[~keep].any(), f"{weight.path} moved at step {self.steps}"


def train(data_or_dataset, distribution=None, check=True):
    """The final kernels of the pruned MLP trained on ``data_or_dataset`` (under ``distribution``)."""
    keras.utils.set_random_seed(0)
    with distribution.scope() if distribution else _nothing():
        model = keras.Sequential([
            keras.Input((16,)),
            keras.layers.Dense(32, activation="relu", name="hidden"),
            keras.layers.Dense(3, name="logits"),
        ])
        pruned = kp.prune_low_magnitude(model, SCHEDULE)
        pruned.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        held = ZerosHeld(pruned)
        callbacks = [kp.UpdatePruningStep()] + ([held] if check else [])
        # A multi-process dataset has no known length: repeat it and give the steps (as Keras advises).
        fit = dict(batch_size=32, shuffle=False) if isinstance(data_or_dataset, tuple) else dict(steps_per_epoch=8)
        args = data_or_dataset if isinstance(data_or_dataset, tuple) else (data_or_dataset,)
        pruned.fit(*args, epochs=2, callbacks=callbacks, verbose=0, **fit)
    for weight, mask in zip(pruned.prunable_weights(), pruned.mask_variables):
        assert mask.value.sharding == weight.value.sharding, (weight.path, mask.value.sharding, weight.value.sharding)
    assert int(keras.ops.convert_to_numpy(pruned.pruning_step)) == 16  # every step counted once
    kernels = [keras.ops.convert_to_numpy(w) for w in pruned.prunable_weights()]
    for kernel in kernels:
        assert np.sum(kernel == 0) == round(SPARSITY * kernel.size)
    return kernels, [w.value.sharding for w in pruned.prunable_weights()]


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def same_as_one_device(distribution):
    reference, _ = train(data())
    kernels, shardings = train(data(), distribution)
    for expected, got in zip(reference, kernels):
        np.testing.assert_array_equal(expected == 0, got == 0)
        np.testing.assert_allclose(expected, got, atol=1e-5)
    return shardings


def data_parallel():
    shardings = same_as_one_device(keras.distribution.DataParallel(devices=jax.devices()))
    assert all(s.is_fully_replicated for s in shardings)


def model_parallel():
    mesh = keras.distribution.DeviceMesh((1, 2), ["batch", "model"], jax.devices())
    layouts = keras.distribution.LayoutMap(mesh)
    layouts[".*hidden/kernel"] = (None, "model")  # output units split over the two devices
    layouts[".*logits/kernel"] = ("model", None)  # input units split: the pruning axis of N:M
    shardings = same_as_one_device(keras.distribution.ModelParallel(layout_map=layouts, batch_dim_name="batch"))
    assert [tuple(s.spec) for s in shardings] == [(None, "model"), ("model", None)]


def worker(process_id, port, folder):
    import tensorflow as tf

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    keras.distribution.initialize(job_addresses=f"localhost:{port}", num_processes=2, process_id=int(process_id))
    assert jax.process_count() == 2 and len(jax.devices()) == 2
    x, y = data()
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(32).repeat()
    kernels, _ = train(dataset, keras.distribution.DataParallel(devices=jax.devices()))
    np.savez(f"{folder}/process_{process_id}.npz", *kernels)
    if process_id == "0":  # the same model on this process's own device alone
        reference, _ = train((x, y), check=False)
        np.savez(f"{folder}/one_device.npz", *reference)


if __name__ == "__main__":
    name, *args = sys.argv[1:]
    globals()[name](*args)
    print("OK")
