"""Small pruning scripts run unchanged under tfmot (Keras 2) and under keras_prune.compat.tfmot.

Usage: python tests/tfmot_scenarios.py {tfmot,keras_prune} OUT.json

Each scenario is tfmot user code; only the two imports differ between the worlds. Each returns
a dict of plain values (sparsities per step, masks, predictions, exception type names,
schedule values) that tests/test_tfmot_differential.py compares between the worlds. Weights and
data come from seeded numpy generators, so both worlds start from the same numbers.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import traceback

import numpy as np

WORLD = sys.argv[1] if __name__ == "__main__" else "keras_prune"
if WORLD == "tfmot":
    import tensorflow_model_optimization as tfmot
    import tf_keras as keras
else:
    import keras

    import keras_prune.compat.tfmot as tfmot
import tensorflow as tf  # noqa: E402  (after the world's Keras: tf_keras needs TF_USE_LEGACY_KERAS first)

K = tfmot.sparsity.keras
SCENARIOS = {}


def scenario(function):
    SCENARIOS[function.__name__] = function
    return function


# -- helpers: the same public calls in both worlds --------------------------------------------


def seeded_weights(model, seed=0, scale=0.3):
    """Sets every weight of ``model`` (layer by layer, in each layer's order) from a seeded rng."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        layer.set_weights([(rng.normal(size=w.shape) * scale).astype("float32") for w in layer.get_weights()])
    return model


def wrappers(model):
    return [layer for layer in model.layers if type(layer).__name__ == "PruneLowMagnitude"]


def mask_arrays(wrapper):
    if WORLD == "tfmot":
        return [np.asarray(mask.numpy()) for _, mask, _ in wrapper.pruning_vars]
    return [keras.ops.convert_to_numpy(mask) for mask in wrapper.mask_variables]


def all_masks(model):
    return [m.astype(int).ravel().tolist() for w in wrappers(model) for m in mask_arrays(w)]


def sparsities(model):
    return [round(1.0 - float(np.mean(m)), 6) for w in wrappers(model) for m in mask_arrays(w)]


class StepSparsity(keras.callbacks.Callback):
    """Records the mask sparsities after every batch."""

    def __init__(self):
        super().__init__()
        self.steps = []

    def on_train_batch_end(self, batch, logs=None):
        self.steps.append(sparsities(self.model))


def data(n=64, shape=(16,), classes=3, seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, *shape)).astype("float32"), rng.integers(0, classes, size=n)


def mlp(features=16, hidden=32, classes=3):
    return keras.Sequential([keras.Input((features,)), keras.layers.Dense(hidden, activation="relu"),
                             keras.layers.Dense(classes)])


def fit(model, x, y, batch_size, epochs=1, callbacks=(), optimizer=None):
    model.compile(optimizer=optimizer or keras.optimizers.SGD(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    recorder = StepSparsity()
    model.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=False, verbose=0,
              callbacks=[K.UpdatePruningStep(), recorder, *callbacks])
    return recorder.steps


def error_name(function):
    try:
        function()
    except Exception as error:  # noqa: BLE001 - the type is the result
        return type(error).__name__
    return None


def predictions(model, x):
    return np.asarray(model.predict(x, verbose=0)).round(5).tolist()


# -- the seed's example 3 and tfmot's documented recipes ----------------------------------------


@scenario
def seed_example_three():
    model = seeded_weights(mlp())
    x, y = data(n=256)
    pruning_params = {
        'pruning_schedule': K.PolynomialDecay(initial_sparsity=0.3, final_sparsity=0.7, begin_step=0,
                                             end_step=1000)
    }
    model_for_pruning = K.prune_low_magnitude(model, **pruning_params)
    steps = fit(model_for_pruning, x, y, batch_size=2)
    model = K.strip_pruning(model_for_pruning)
    return {"steps": steps, "masks": all_masks(model_for_pruning), "predictions": predictions(model, x[:8])}


@scenario
def pruning_in_keras_tutorial():
    model = keras.Sequential([
        keras.layers.InputLayer(input_shape=(28, 28)) if WORLD == "tfmot" else keras.Input((28, 28)),
        keras.layers.Reshape(target_shape=(28, 28, 1)),
        keras.layers.Conv2D(filters=12, kernel_size=(3, 3), activation='relu'),
        keras.layers.MaxPooling2D(pool_size=(2, 2)),
        keras.layers.Flatten(),
        keras.layers.Dense(10),
    ])
    seeded_weights(model, scale=0.1)
    rng = np.random.default_rng(2)
    train_images, train_labels = rng.random((300, 28, 28)).astype("float32"), rng.integers(0, 10, 300)
    batch_size, epochs, validation_split = 32, 2, 0.1
    num_images = train_images.shape[0] * (1 - validation_split)
    end_step = np.ceil(num_images / batch_size).astype(np.int32) * epochs
    pruning_params = {
        'pruning_schedule': K.PolynomialDecay(initial_sparsity=0.50, final_sparsity=0.80, begin_step=0,
                                             end_step=int(end_step), frequency=5)
    }
    model_for_pruning = K.prune_low_magnitude(model, **pruning_params)
    model_for_pruning.compile(optimizer='adam',
                              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                              metrics=['accuracy'])
    logdir = tempfile.mkdtemp()
    recorder = StepSparsity()
    callbacks = [K.UpdatePruningStep(), K.PruningSummaries(log_dir=logdir), recorder]
    model_for_pruning.fit(train_images, train_labels, batch_size=batch_size, epochs=epochs,
                          validation_split=validation_split, callbacks=callbacks, shuffle=False, verbose=0)
    model_for_export = K.strip_pruning(model_for_pruning)
    return {"wrapped": [type(w.layer).__name__ for w in wrappers(model_for_pruning)], "steps": recorder.steps,
            "masks": all_masks(model_for_pruning), "predictions": predictions(model_for_export, train_images[:4]),
            "summaries": summary_values(logdir)}


def summary_values(logdir):
    """``(step, value)`` of every pruning sparsity scalar in the event files, sorted."""
    found = []
    for root, _, files in os.walk(os.path.join(logdir, "metrics")):
        for name in files:
            for event in tf.compat.v1.train.summary_iterator(os.path.join(root, name)):
                for value in event.summary.value:
                    if value.tag.endswith("/sparsity"):
                        number = tf.make_ndarray(value.tensor) if value.HasField("tensor") else value.simple_value
                        found.append((int(event.step), round(float(number), 5)))
    return sorted(found)


@scenario
def prune_some_layers_with_clone_model():
    base_model = seeded_weights(keras.Sequential([keras.Input((16,)), keras.layers.Dense(32, activation="relu"),
                                                  keras.layers.Dropout(0.0), keras.layers.Dense(3)]))

    def apply_pruning_to_dense(layer):
        if isinstance(layer, keras.layers.Dense):
            return K.prune_low_magnitude(layer, K.ConstantSparsity(0.6, 0, frequency=3))
        return layer

    model_for_pruning = keras.models.clone_model(base_model, clone_function=apply_pruning_to_dense)
    x, y = data()
    steps = fit(model_for_pruning, x, y, batch_size=8, epochs=2)
    return {"layers": [type(layer).__name__ for layer in model_for_pruning.layers], "steps": steps,
            "masks": all_masks(model_for_pruning)}


@scenario
def custom_training_loop():
    model_for_pruning = K.prune_low_magnitude(seeded_weights(mlp()), K.PolynomialDecay(0.2, 0.8, 0, 6, frequency=2))
    x_train, y_train = data(n=16)
    y_train = keras.utils.to_categorical(y_train, 3)
    loss = keras.losses.categorical_crossentropy
    optimizer = keras.optimizers.SGD(0.05)
    log_dir = tempfile.mkdtemp()
    unused_arg = -1
    epochs, batches = 4, 2
    model_for_pruning.optimizer = optimizer
    step_callback = K.UpdatePruningStep()
    step_callback.set_model(model_for_pruning)
    log_callback = K.PruningSummaries(log_dir=log_dir)
    log_callback.set_model(model_for_pruning)
    step_callback.on_train_begin()
    steps = []
    for _ in range(epochs):
        log_callback.on_epoch_begin(epoch=unused_arg)
        for _ in range(batches):
            step_callback.on_train_batch_begin(batch=unused_arg)
            with tf.GradientTape() as tape:
                logits = model_for_pruning(x_train, training=True)
                loss_value = tf.reduce_mean(loss(y_train, tf.nn.softmax(logits)))
                grads = tape.gradient(loss_value, model_for_pruning.trainable_variables)
                optimizer.apply_gradients(zip(grads, model_for_pruning.trainable_variables))
            steps.append(sparsities(model_for_pruning))
        step_callback.on_epoch_end(batch=unused_arg)
    return {"steps": steps, "masks": all_masks(model_for_pruning), "summaries": summary_values(log_dir),
            "predictions": predictions(K.strip_pruning(model_for_pruning), x_train[:4])}


@scenario
def prunable_layer():
    class MyDenseLayer(keras.layers.Dense, K.PrunableLayer):
        def get_prunable_weights(self):
            return [self.kernel, self.bias]  # prunes the bias too, as tfmot's guide shows

    model_for_pruning = keras.Sequential([
        K.prune_low_magnitude(MyDenseLayer(20, input_shape=(10,)), K.ConstantSparsity(0.5, 0, frequency=2)),
        keras.layers.Flatten(),
    ])
    seeded_weights(model_for_pruning)
    x, y = data(n=32, shape=(10,), classes=20)
    steps = fit(model_for_pruning, x, y, batch_size=8)
    return {"built": model_for_pruning.built, "steps": steps, "masks": all_masks(model_for_pruning)}


@scenario
def checkpoint_and_restore_mid_pruning():
    schedule = K.PolynomialDecay(0.2, 0.8, begin_step=0, end_step=12, frequency=2)
    x, y = data()
    model_for_pruning = K.prune_low_magnitude(seeded_weights(mlp()), schedule)
    first = fit(model_for_pruning, x, y, batch_size=16)
    keras_model_file = os.path.join(tempfile.mkdtemp(), "pruned.h5" if WORLD == "tfmot" else "pruned.keras")
    model_for_pruning.save(keras_model_file, include_optimizer=True)
    with K.prune_scope():
        loaded_model = keras.models.load_model(keras_model_file)
    recorder = StepSparsity()
    loaded_model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0,
                     callbacks=[K.UpdatePruningStep(), recorder])
    return {"first": first, "resumed": recorder.steps, "masks": all_masks(loaded_model),
            "step": [int(np.asarray(w.pruning_step)) for w in wrappers(loaded_model)]}


# -- the numbered items of the issue -------------------------------------------------------------


@scenario
def step_timing():
    x, y = data(n=120)
    default = K.prune_low_magnitude(seeded_weights(mlp()))
    default_steps = fit(default, x, y, batch_size=1)
    decay = K.prune_low_magnitude(seeded_weights(mlp()), K.PolynomialDecay(0.2, 0.6, begin_step=1, end_step=4,
                                                                           frequency=1))
    decay_steps = fit(decay, x[:6], y[:6], batch_size=1)
    return {"default": default_steps, "decay": decay_steps, "default_masks": all_masks(default),
            "decay_masks": all_masks(decay), "predictions": predictions(K.strip_pruning(decay), x[:4])}


@scenario
def layers_with_nothing_to_prune():
    dropout = type(K.prune_low_magnitude(keras.layers.Dropout(0.5))).__name__
    listed = [type(layer.layer).__name__ for layer in K.prune_low_magnitude(
        [keras.layers.Dense(4), keras.layers.Dropout(0.5), keras.layers.MaxPooling2D()])]
    inputs = keras.Input((8,))
    outputs = keras.layers.Add()([keras.layers.Dense(4)(inputs), keras.layers.Dense(4)(inputs)])
    functional = K.prune_low_magnitude(keras.Model(inputs, outputs))
    return {"dropout": dropout, "listed": listed,
            "functional": [type(w.layer).__name__ for w in wrappers(functional)]}


@scenario
def keyword_calls():
    def attention_model(keyword_only):
        x = keras.Input((5, 8))
        attention = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4)
        attention(x, x)  # tfmot cannot build a wrapped attention layer: build it first
        mha = K.prune_low_magnitude(attention, K.ConstantSparsity(0.5, 0, frequency=1))
        y = mha(query=x, value=x) if keyword_only else mha(x, value=x)
        return seeded_weights(keras.Model(x, keras.layers.Flatten()(y)), scale=0.2)

    rng = np.random.default_rng(3)
    data_x, data_y = rng.normal(size=(16, 5, 8)).astype("float32"), rng.integers(0, 40, 16)
    model = attention_model(keyword_only=False)
    steps = fit(model, data_x, data_y, batch_size=8)
    return {"steps": steps, "masks": all_masks(model), "predictions": predictions(model, data_x[:2]),
            "keyword_only": error_name(lambda: attention_model(keyword_only=True))}


@scenario
def custom_layers_through_strip():
    class Double(keras.layers.Layer, K.PrunableLayer):
        def __init__(self):  # takes no Keras keyword arguments
            super().__init__()

        def call(self, inputs):
            return inputs * 2.0

        def get_prunable_weights(self):
            return []

    base = keras.Sequential([keras.Input((16,)), keras.layers.Dense(8), Double(), keras.layers.Dense(3)])
    seeded_weights(base)
    pruned = K.prune_low_magnitude(base, K.ConstantSparsity(0.5, 0, frequency=1))
    holds_original = pruned.layers[0].layer is base.layers[0] and pruned.layers[0].layer.kernel is base.layers[0].kernel
    x, y = data()
    fit(pruned, x, y, batch_size=16)
    stripped = K.strip_pruning(pruned)
    return {"holds_original": holds_original, "stripped": [type(layer).__name__ for layer in stripped.layers],
            "reused": [a is b for a, b in zip(stripped.layers, base.layers)], "predictions": predictions(stripped, x[:4])}


@scenario
def high_sparsity():
    model = K.prune_low_magnitude(
        seeded_weights(keras.Sequential([keras.Input((4,)), keras.layers.Dense(10), keras.layers.Dense(2)])),
        K.ConstantSparsity(0.99, 0, frequency=1))
    x, y = data(n=4, shape=(4,), classes=2)
    return {"steps": fit(model, x, y, batch_size=2), "masks": all_masks(model)}


@scenario
def partly_pruned_models():
    inner = K.prune_low_magnitude(keras.layers.Dense(8), K.ConstantSparsity(0.25, 0, frequency=1))
    model = seeded_weights(keras.Sequential([keras.Input((16,)), inner, keras.layers.Dense(3)]))
    pruned = K.prune_low_magnitude(model, K.ConstantSparsity(0.5, 0, frequency=1))
    x, y = data()
    steps = fit(pruned, x, y, batch_size=16)
    unbuilt = K.prune_low_magnitude(keras.Sequential([keras.layers.Dense(4), keras.layers.Dense(2)]))

    def round_trip():
        with K.prune_scope():
            copy = keras.Sequential.from_config(unbuilt.get_config())
        copy.build((None, 3))
        return copy

    return {"layers": [type(layer).__name__ for layer in pruned.layers], "kept": pruned.layers[0] is inner,
            "steps": steps, "unbuilt_round_trip": error_name(round_trip)}


@scenario
def schedules():
    constant = K.ConstantSparsity(0.5, begin_step=2, end_step=9, frequency=3)
    decay = K.PolynomialDecay(0.2, 0.8, begin_step=1, end_step=7, power=2, frequency=2)

    class EveryThird(K.PruningSchedule):  # tfmot's documented way: override __call__ and get_config
        def __call__(self, step):
            return tf.math.equal(tf.math.floormod(step, 3), 0), tf.constant(0.4, tf.float32)

        def get_config(self):
            return {"class_name": "EveryThird", "config": {}}

    values = {}
    for name, schedule in [("constant", constant), ("decay", decay), ("custom", EveryThird())]:
        pairs = [schedule(tf.constant(step, tf.int64)) for step in range(12)]
        values[name] = [(bool(p[0].numpy()), round(float(p[1].numpy()), 6)) for p in pairs]
        values[name + "_types"] = sorted({type(t).__name__.replace("EagerTensor", "Tensor") for p in pairs for t in p})
        traced = tf.function(lambda step, s=schedule: s(step))(tf.constant(5, tf.int64))
        values[name + "_traced"] = [bool(traced[0].numpy()), round(float(traced[1].numpy()), 6)]
    values["configs"] = [constant.get_config(), decay.get_config()]
    values["from_config"] = type(K.PolynomialDecay.from_config(decay.get_config()["config"])).__name__
    model = K.prune_low_magnitude(seeded_weights(mlp()), EveryThird())
    x, y = data(n=48)
    values["custom_steps"] = fit(model, x, y, batch_size=8)
    return values


@scenario
def errors():
    def train_without_callback():
        model = K.prune_low_magnitude(mlp())
        model.compile(optimizer="sgd", loss="mse")
        x, _ = data()
        model.fit(x, np.zeros((len(x), 3), "float32"), verbose=0)

    return {
        "missing_callback": error_name(train_without_callback),
        "empty_log_dir": error_name(lambda: K.PruningSummaries(log_dir="")),
        "not_a_layer": error_name(lambda: K.prune_low_magnitude(object())),
        "strip_a_layer": error_name(lambda: K.strip_pruning(keras.layers.Dense(2))),
        "bad_sparsity": error_name(lambda: K.ConstantSparsity(1.5, 0)),
        "bad_steps": error_name(lambda: K.PolynomialDecay(0.1, 0.5, begin_step=5, end_step=2)),
        "bad_pooling": error_name(lambda: K.prune_low_magnitude(keras.layers.Dense(2), block_pooling_type="MIN")),
    }


@scenario
def what_gets_pruned():
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.SeparableConv2D(8, 3),
                              keras.layers.DepthwiseConv2D(3), keras.layers.Flatten(), keras.layers.Dense(2)])
    seeded_weights(model)
    pruned = K.prune_low_magnitude(model, K.ConstantSparsity(0.5, 0, frequency=1))
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(8, 8, 8, 3)).astype("float32"), rng.integers(0, 2, 8)
    steps = fit(pruned, x, y, batch_size=4)
    stripped = K.strip_pruning(pruned)
    zeros = [round(float(np.mean(np.asarray(w) == 0)), 4) for w in stripped.weights if len(w.shape) > 1]
    return {"steps": steps, "kernel_zeros": zeros, "wrapped": [type(w.layer).__name__ for w in wrappers(pruned)]}


def main() -> None:
    names = sys.argv[3:] or list(SCENARIOS)
    results = {}
    for name in names:
        keras.backend.clear_session()
        tf.random.set_seed(0)
        try:
            results[name] = SCENARIOS[name]()
        except Exception as error:  # noqa: BLE001 - reported to the test, which fails on it
            results[name] = {"crashed": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
    with open(sys.argv[2], "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
