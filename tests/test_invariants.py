"""The semantics keras-prune holds to, checked step by step during real training."""

import os

import keras
import numpy as np
import pytest

import keras_prune as kp
from keras_prune import masks
from keras_prune.callbacks import collect_wrappers

from helpers import compile_classifier, dense_data, mlp

pytestmark = pytest.mark.core


class StepRecorder(keras.callbacks.Callback):
    """After every batch: each wrapper's masks, and whether every pruned weight is exactly 0."""

    def __init__(self):
        super().__init__()
        self.masks, self.violations = [], 0

    def on_train_batch_end(self, batch, logs=None):
        step_masks = []
        for wrapper in collect_wrappers(self.model):
            for weight, keep in zip(wrapper.prunable_weights(), wrapper.masks()):
                values = keras.ops.convert_to_numpy(weight)
                self.violations += int(np.count_nonzero(values[~keep]))
                step_masks.append(keep)
        self.masks.append(step_masks)


OPTIMIZERS = {
    "sgd_momentum": lambda: keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True),
    "adam": lambda: keras.optimizers.Adam(0.01),
    "adamw": lambda: keras.optimizers.AdamW(0.01, weight_decay=0.5),
    "rmsprop": lambda: keras.optimizers.RMSprop(0.01, momentum=0.5),
    "adagrad": lambda: keras.optimizers.Adagrad(0.1),
    "adadelta": lambda: keras.optimizers.Adadelta(1.0),
    "adamax": lambda: keras.optimizers.Adamax(0.01),
    "nadam": lambda: keras.optimizers.Nadam(0.01),
    "ftrl": lambda: keras.optimizers.Ftrl(0.1),
    "lion": lambda: keras.optimizers.Lion(0.001),
    "adafactor": lambda: keras.optimizers.Adafactor(0.01),
    "lamb": lambda: keras.optimizers.Lamb(0.01),
    "sgd_ema": lambda: keras.optimizers.SGD(0.1, momentum=0.9, use_ema=True),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_pruned_weights_are_exactly_zero_after_every_step(name):
    x, y = dense_data()
    schedule = kp.PolynomialDecay(0.3, 0.9, begin_step=0, end_step=20, frequency=4)
    pruned = compile_classifier(kp.prune_low_magnitude(mlp(), schedule), OPTIMIZERS[name]())
    recorder = StepRecorder()
    pruned.fit(x, y, epochs=3, batch_size=32, verbose=0,
               callbacks=[kp.UpdatePruningStep(), recorder])
    assert len(recorder.masks) == 24
    assert recorder.violations == 0
    for wrapper in collect_wrappers(pruned):
        for weight in wrapper.prunable_weights():
            values = keras.ops.convert_to_numpy(weight)
            assert np.count_nonzero(values == 0) == masks.prune_count(0.9, values.size)


def test_masks_change_only_on_update_steps_and_hit_exact_sparsity():
    x, y = dense_data()
    schedule = kp.PolynomialDecay(0.2, 0.8, begin_step=3, end_step=15, frequency=3)
    pruned = compile_classifier(kp.prune_low_magnitude(mlp(), schedule), "sgd")
    recorder = StepRecorder()
    pruned.fit(x, y, epochs=3, batch_size=32, verbose=0,
               callbacks=[kp.UpdatePruningStep(), recorder])
    changed = [step for step in range(1, len(recorder.masks))
               if any((a != b).any() for a, b in zip(recorder.masks[step - 1], recorder.masks[step]))]
    assert set(changed) <= {3, 6, 9, 12, 15}
    assert len(changed) >= 3  # sparsity rises, so most updates change something
    for step in (3, 6, 9, 12, 15):
        target = schedule.sparsity_at(step)
        for keep in recorder.masks[step]:
            assert int((~keep).sum()) == masks.prune_count(target, keep.size)


def test_global_scope_ranks_all_weights_together():
    x, y = dense_data()
    pruned = kp.prune_low_magnitude(mlp(), kp.ConstantSparsity(0.7, 0), scope="global")
    before = np.concatenate([keras.ops.convert_to_numpy(w.layer.kernel).ravel()
                             for w in collect_wrappers(pruned)])
    compile_classifier(pruned, keras.optimizers.SGD(0.0))
    pruned.fit(x, y, epochs=1, batch_size=256, verbose=0, callbacks=[kp.UpdatePruningStep()])
    after = np.concatenate([keras.ops.convert_to_numpy(w.layer.kernel).ravel()
                            for w in collect_wrappers(pruned)])
    expected = masks.sparsity_mask(np.abs(before), 0.7)
    np.testing.assert_array_equal(after != 0, expected)
    per_layer = [np.mean(keras.ops.convert_to_numpy(w.layer.kernel) == 0) for w in collect_wrappers(pruned)]
    assert per_layer[0] != pytest.approx(per_layer[1])  # not the same 70% in each tensor


def _first_kernel_after_training(**pattern):
    x, y = dense_data()
    schedule = kp.ConstantSparsity(0.5, 0, frequency=3)
    pruned = compile_classifier(kp.prune_low_magnitude(mlp(), schedule, **pattern))
    pruned.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[kp.UpdatePruningStep()])
    return keras.ops.convert_to_numpy(pruned.layers[0].layer.kernel)  # (16, 24)


def test_two_four_pattern_holds_through_training():
    kernel = _first_kernel_after_training(sparsity_m_by_n=(2, 4))
    groups = (kernel != 0).T.reshape(-1, 4)
    assert (groups.sum(axis=1) <= 2).all()


def test_block_sparsity_holds_through_training():
    kernel = _first_kernel_after_training(block_size=(4, 4))
    blocks = (kernel != 0).reshape(4, 4, 6, 4).transpose(0, 2, 1, 3).reshape(24, 16)
    assert all(b.all() or not b.any() for b in blocks)
    assert int((~blocks.any(axis=1)).sum()) == 12


def _train(model, x, y, epochs):
    model.fit(x, y, epochs=epochs, batch_size=32, shuffle=False, verbose=0,
              callbacks=[kp.UpdatePruningStep()])


def test_saved_mid_pruning_resumes_exactly(tmp_path):
    x, y = dense_data()
    schedule = kp.PolynomialDecay(0.1, 0.85, begin_step=2, end_step=30, frequency=2)
    base = mlp()
    base.build((None, 16))
    reference = compile_classifier(kp.prune_low_magnitude(base, schedule))
    interrupted = compile_classifier(kp.prune_low_magnitude(base, schedule))
    _train(reference, x, y, epochs=4)
    _train(interrupted, x, y, epochs=2)
    path = os.fspath(tmp_path / "mid.keras")
    interrupted.save(path)
    resumed = keras.saving.load_model(path)  # no custom_objects needed
    assert isinstance(resumed.layers[0], kp.PruneLowMagnitude)
    assert resumed.layers[0].pruning_schedule == schedule
    assert int(keras.ops.convert_to_numpy(resumed.layers[0].pruning_step)) == 16
    _train(resumed, x, y, epochs=2)
    for a, b in zip(collect_wrappers(reference), collect_wrappers(resumed)):
        assert int(keras.ops.convert_to_numpy(a.pruning_step)) == 32
        assert int(keras.ops.convert_to_numpy(b.pruning_step)) == 32
        for ka, kb in zip(a.masks(), b.masks()):
            np.testing.assert_array_equal(ka, kb)
    for wa, wb in zip(reference.get_weights(), resumed.get_weights()):
        np.testing.assert_allclose(wa, wb, rtol=1e-5, atol=1e-6)


def test_strip_returns_the_original_config_and_the_pruned_predictions(tmp_path):
    x, y = dense_data()
    model = mlp()
    pruned = compile_classifier(kp.prune_low_magnitude(model, kp.ConstantSparsity(0.8, 0)))
    _train(pruned, x, y, epochs=1)
    stripped = kp.strip_pruning(pruned)
    assert stripped.get_config() == model.get_config()
    np.testing.assert_array_equal(stripped.predict(x, verbose=0), pruned.predict(x, verbose=0))
    path = os.fspath(tmp_path / "stripped.keras")
    stripped.save(path)
    loaded = keras.saving.load_model(path)
    kernel = keras.ops.convert_to_numpy(loaded.layers[0].kernel)
    assert np.count_nonzero(kernel == 0) == masks.prune_count(0.8, kernel.size)
    assert not np.signbit(kernel[kernel == 0]).any()  # +0.0, which compresses best
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), pruned.predict(x, verbose=0))


def test_wrapper_config_round_trips():
    wrapper = kp.PruneLowMagnitude(keras.layers.Dense(3, name="d"), kp.PolynomialDecay(0.1, 0.6, 0, 9),
                                   block_size=(2, 1), block_pooling_type="MAX", scope="layer")
    restored = kp.PruneLowMagnitude.from_config(wrapper.get_config())
    assert restored.get_config() == wrapper.get_config()
    assert restored.block_size == (2, 1) and restored.block_pooling_type == "MAX"


@pytest.mark.tensorflow_only
def test_custom_gradient_tape_loop():
    import tensorflow as tf

    x, y = dense_data()
    pruned = kp.prune_low_magnitude(mlp(), kp.PolynomialDecay(0.0, 0.75, 0, 6, frequency=2))
    optimizer = keras.optimizers.Adam(0.01)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    step = kp.UpdatePruningStep()
    step.set_model(pruned)
    step.on_train_begin()
    for i in range(8):
        step.on_train_batch_begin(i)
        with tf.GradientTape() as tape:
            loss = loss_fn(y[i * 32:(i + 1) * 32], pruned(x[i * 32:(i + 1) * 32], training=True))
        grads = tape.gradient(loss, pruned.trainable_variables)
        optimizer.apply_gradients(zip(grads, pruned.trainable_variables))
        step.on_train_batch_end(i)
    step.on_train_end()
    for wrapper in collect_wrappers(pruned):
        kernel = keras.ops.convert_to_numpy(wrapper.layer.kernel)
        assert np.count_nonzero(kernel == 0) == masks.prune_count(0.75, kernel.size)


def test_mixed_float16_policy():
    x, y = dense_data()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        pruned = compile_classifier(kp.prune_low_magnitude(mlp(), kp.ConstantSparsity(0.6, 0, frequency=2)))
        recorder = StepRecorder()
        pruned.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[kp.UpdatePruningStep(), recorder])
    finally:
        keras.config.set_dtype_policy("float32")
    assert recorder.violations == 0
    kernel = keras.ops.convert_to_numpy(pruned.layers[0].layer.kernel)
    assert np.mean(kernel == 0) == pytest.approx(masks.prune_count(0.6, kernel.size) / kernel.size)


def test_jit_compile():
    x, y = dense_data()
    pruned = compile_classifier(kp.prune_low_magnitude(mlp(), kp.ConstantSparsity(0.6, 0, frequency=2)),
                                jit_compile=True)
    recorder = StepRecorder()
    pruned.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[kp.UpdatePruningStep(), recorder])
    assert recorder.violations == 0
    assert np.mean(keras.ops.convert_to_numpy(pruned.layers[1].layer.kernel) == 0) == pytest.approx(0.6, abs=0.01)


@pytest.mark.tensorflow_only
def test_pruning_summaries_write_sparsity_scalars(tmp_path):
    import tensorflow as tf

    x, y = dense_data()
    pruned = compile_classifier(kp.prune_low_magnitude(mlp(), kp.ConstantSparsity(0.5, 0)))
    pruned.fit(x, y, epochs=2, verbose=0,
               callbacks=[kp.UpdatePruningStep(), kp.PruningSummaries(os.fspath(tmp_path))])
    tags = {}
    for root, _, files in os.walk(tmp_path):
        for name in files:
            for event in tf.compat.v1.train.summary_iterator(os.path.join(root, name)):
                for value in event.summary.value:
                    if value.tag.endswith(("pruning_sparsity", "threshold")):
                        tags[value.tag] = float(tf.make_ndarray(value.tensor))
    assert tags["hidden/kernel/pruning_sparsity"] == pytest.approx(0.5)
    assert tags["logits/kernel/threshold"] > 0
