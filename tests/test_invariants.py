"""The semantics keras-prune holds to, checked step by step during real training."""

import json
import os

import keras
import numpy as np
import pytest

import keras_prune as kp
from keras_prune import masks
from keras_prune.callbacks import collect_pruning

from helpers import (
    block_model,
    compile_classifier,
    dense_data,
    mlp,
    prune_functions,
    pruned_kernel,
    pruned_masks,
    pruned_variables,
    pruning_steps,
    twin,
)
from hub_backbones import BACKBONES, sample_inputs

pytestmark = pytest.mark.core

PRUNE = prune_functions()
BOTH_PATHS = pytest.mark.parametrize("path", sorted(PRUNE))


class StepRecorder(keras.callbacks.Callback):
    """After every batch: every pruned weight's mask, and whether every pruned weight is exactly 0."""

    def __init__(self):
        super().__init__()
        self.masks, self.violations = [], 0

    def on_train_batch_end(self, batch, logs=None):
        step_masks = []
        for state in collect_pruning(self.model):
            for weight, keep in zip(state.prunable_weights(), state.masks()):
                values = keras.ops.convert_to_numpy(weight)
                self.violations += int(np.count_nonzero(values[~keep]))
                step_masks.append(keep)
        assert step_masks, "no pruned weight found"
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
    weights = pruned_variables(pruned)
    assert len(weights) == 2
    for weight in weights:
        values = keras.ops.convert_to_numpy(weight)
        assert np.count_nonzero(values == 0) == masks.prune_count(0.9, values.size)


@pytest.mark.parametrize("name", ["adamw", "sgd_ema"])
def test_tfmot_wrappers_keep_pruned_weights_zero_after_every_step(name):
    x, y = dense_data()
    schedule = kp.PolynomialDecay(0.3, 0.9, begin_step=0, end_step=20, frequency=4)
    pruned = compile_classifier(PRUNE["tfmot"](mlp(), schedule), OPTIMIZERS[name]())
    assert all(isinstance(layer, kp.PruneLowMagnitude) for layer in pruned.layers)
    recorder = StepRecorder()
    pruned.fit(x, y, epochs=3, batch_size=32, verbose=0, callbacks=[kp.UpdatePruningStep(), recorder])
    assert len(recorder.masks) == 24 and recorder.violations == 0
    for weight in pruned_variables(pruned):
        values = keras.ops.convert_to_numpy(weight)
        assert np.count_nonzero(values == 0) == masks.prune_count(0.9, values.size)


@BOTH_PATHS
def test_masks_change_only_on_update_steps_and_hit_exact_sparsity(path):
    x, y = dense_data()
    schedule = kp.PolynomialDecay(0.2, 0.8, begin_step=3, end_step=15, frequency=3)
    pruned = compile_classifier(PRUNE[path](mlp(), schedule), "sgd")
    recorder = StepRecorder()
    pruned.fit(x, y, epochs=3, batch_size=32, verbose=0,
               callbacks=[kp.UpdatePruningStep(), recorder])
    changed = [step for step in range(1, len(recorder.masks))
               if any((a != b).any() for a, b in zip(recorder.masks[step - 1], recorder.masks[step]))]
    assert set(changed) <= {3, 6, 9, 12, 15}
    assert len(changed) >= 3  # sparsity rises, so most updates change something
    assert all(len(step_masks) == 2 for step_masks in recorder.masks)
    for step in (3, 6, 9, 12, 15):
        target = schedule.sparsity_at(step)
        for keep in recorder.masks[step]:
            assert int((~keep).sum()) == masks.prune_count(target, keep.size)


@BOTH_PATHS
def test_global_scope_ranks_all_weights_together(path):
    x, y = dense_data()
    pruned = PRUNE[path](mlp(), kp.ConstantSparsity(0.7, 0), scope="global")
    kernels = [pruned_kernel(pruned, name) for name in ("hidden", "logits")]
    assert len(pruned_variables(pruned)) == 2
    before = np.concatenate([k.ravel() for k in kernels])
    compile_classifier(pruned, keras.optimizers.SGD(0.0))
    pruned.fit(x, y, epochs=1, batch_size=256, verbose=0, callbacks=[kp.UpdatePruningStep()])
    kernels = [pruned_kernel(pruned, name) for name in ("hidden", "logits")]
    after = np.concatenate([k.ravel() for k in kernels])
    expected = masks.sparsity_mask(np.abs(before), 0.7)
    np.testing.assert_array_equal(after != 0, expected)
    per_layer = [np.mean(k == 0) for k in kernels]
    assert per_layer[0] != pytest.approx(per_layer[1])  # not the same 70% in each tensor


def _first_kernel_after_training(path, **pattern):
    x, y = dense_data()
    schedule = kp.ConstantSparsity(0.5, 0, frequency=3)
    pruned = compile_classifier(PRUNE[path](mlp(), schedule, **pattern))
    pruned.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[kp.UpdatePruningStep()])
    return pruned_kernel(pruned, "hidden")  # (16, 24)


@BOTH_PATHS
def test_two_four_pattern_holds_through_training(path):
    kernel = _first_kernel_after_training(path, sparsity_m_by_n=(2, 4))
    groups = (kernel != 0).T.reshape(-1, 4)
    assert (groups.sum(axis=1) == 2).all()  # exactly 2 of every 4: as many zeros as the pattern asks


@BOTH_PATHS
def test_block_sparsity_holds_through_training(path):
    kernel = _first_kernel_after_training(path, block_size=(4, 4))
    blocks = (kernel != 0).reshape(4, 4, 6, 4).transpose(0, 2, 1, 3).reshape(24, 16)
    assert all(b.all() or not b.any() for b in blocks)
    assert int((~blocks.any(axis=1)).sum()) == 12


def _train(model, x, y, epochs):
    model.fit(x, y, epochs=epochs, batch_size=32, shuffle=False, verbose=0,
              callbacks=[kp.UpdatePruningStep()])


RESUMED_TYPE = {"core": lambda m: isinstance(m, kp.PrunedModel) and type(m.layer) is keras.Sequential,
                "tfmot": lambda m: all(isinstance(layer, kp.PruneLowMagnitude) for layer in m.layers)}


@BOTH_PATHS
def test_saved_mid_pruning_resumes_exactly(tmp_path, path):
    x, y = dense_data()
    schedule = kp.PolynomialDecay(0.1, 0.85, begin_step=2, end_step=30, frequency=2)
    base = mlp()
    base.build((None, 16))
    reference = compile_classifier(PRUNE[path](base, schedule))
    interrupted = compile_classifier(PRUNE[path](twin(base), schedule))  # the core prunes a model in place
    _train(reference, x, y, epochs=4)
    _train(interrupted, x, y, epochs=2)
    saved_masks = pruned_masks(interrupted)
    file = os.fspath(tmp_path / "mid.keras")
    interrupted.save(file)
    resumed = keras.saving.load_model(file)  # no custom_objects needed
    assert RESUMED_TYPE[path](resumed)
    assert all(state.pruning_schedule == schedule for state in collect_pruning(resumed))
    assert pruning_steps(resumed) == pruning_steps(interrupted) and set(pruning_steps(resumed)) == {16}
    for ka, kb in zip(saved_masks, pruned_masks(resumed), strict=True):
        np.testing.assert_array_equal(ka, kb)
    _train(resumed, x, y, epochs=2)
    assert set(pruning_steps(reference)) == set(pruning_steps(resumed)) == {32}
    for ka, kb in zip(pruned_masks(reference), pruned_masks(resumed), strict=True):
        np.testing.assert_array_equal(ka, kb)
    for wa, wb in zip(reference.get_weights(), resumed.get_weights(), strict=True):
        np.testing.assert_allclose(wa, wb, rtol=1e-5, atol=1e-6)


@BOTH_PATHS
def test_strip_returns_the_original_config_and_the_pruned_predictions(tmp_path, path):
    x, y = dense_data()
    model = mlp()
    config = model.get_config()
    pruned = compile_classifier(PRUNE[path](model, kp.ConstantSparsity(0.8, 0)))
    _train(pruned, x, y, epochs=1)
    stripped = kp.strip_pruning(pruned)
    assert type(stripped) is keras.Sequential
    assert stripped.get_config() == config
    if path == "core":
        assert stripped is model  # pruned in place, handed back
    assert not collect_pruning(stripped)
    assert all(layer.kernel.constraint is None for layer in stripped.layers)
    np.testing.assert_array_equal(stripped.predict(x, verbose=0), pruned.predict(x, verbose=0))
    file = os.fspath(tmp_path / "stripped.keras")
    stripped.save(file)
    loaded = keras.saving.load_model(file)
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
@BOTH_PATHS
def test_custom_gradient_tape_loop(path):
    import tensorflow as tf

    x, y = dense_data()
    pruned = PRUNE[path](mlp(), kp.PolynomialDecay(0.0, 0.75, 0, 6, frequency=2))
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
    assert set(pruning_steps(pruned)) == {8}
    for name in ("hidden", "logits"):
        kernel = pruned_kernel(pruned, name)
        assert np.count_nonzero(kernel == 0) == masks.prune_count(0.75, kernel.size)


@BOTH_PATHS
def test_mixed_float16_policy(path):
    x, y = dense_data()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        pruned = compile_classifier(PRUNE[path](mlp(), kp.ConstantSparsity(0.6, 0, frequency=2)))
        recorder = StepRecorder()
        pruned.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[kp.UpdatePruningStep(), recorder])
    finally:
        keras.config.set_dtype_policy("float32")
    assert recorder.violations == 0 and len(recorder.masks) == 8
    kernel = pruned_kernel(pruned, "hidden")
    assert np.mean(kernel == 0) == pytest.approx(masks.prune_count(0.6, kernel.size) / kernel.size)


@BOTH_PATHS
def test_jit_compile(path):
    x, y = dense_data()
    pruned = compile_classifier(PRUNE[path](mlp(), kp.ConstantSparsity(0.6, 0, frequency=2)), jit_compile=True)
    recorder = StepRecorder()
    pruned.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[kp.UpdatePruningStep(), recorder])
    assert recorder.violations == 0 and len(recorder.masks) == 8
    assert np.mean(pruned_kernel(pruned, "logits") == 0) == pytest.approx(0.6, abs=0.01)


@pytest.mark.tensorflow_only
@BOTH_PATHS
def test_pruning_summaries_write_sparsity_scalars(tmp_path, path):
    import tensorflow as tf

    x, y = dense_data()
    pruned = compile_classifier(PRUNE[path](mlp(), kp.ConstantSparsity(0.5, 0)))
    pruned.fit(x, y, epochs=2, verbose=0,
               callbacks=[kp.UpdatePruningStep(), kp.PruningSummaries(os.fspath(tmp_path))])
    tags = {}
    for root, _, files in os.walk(tmp_path):
        for name in files:
            for event in tf.compat.v1.train.summary_iterator(os.path.join(root, name)):
                for value in event.summary.value:
                    if value.tag.endswith(("pruning_sparsity", "threshold")):
                        tags[value.tag] = float(tf.make_ndarray(value.tensor))

    def tag(suffix):  # the tag is the weight's path, which names the model on the core path
        (found,) = [t for t in tags if t == suffix or t.endswith("/" + suffix)]
        return tags[found]

    assert len(tags) == 4  # a sparsity and a threshold per pruned weight
    assert tag("hidden/kernel/pruning_sparsity") == pytest.approx(0.5)
    assert tag("logits/kernel/pruning_sparsity") == pytest.approx(0.5)
    assert tag("logits/kernel/threshold") > 0


# -- at any depth: layers inside a custom layer, and a KerasHub causal LM (core path) ----------


def _block_case(**_):
    x, y = dense_data()
    return block_model(), x, y


def _gpt2_case(dropout=0.1):
    import keras_hub

    backbone = BACKBONES["gpt2"](dropout=dropout)
    lm = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    x = sample_inputs(backbone, batch=16, seq=16)
    return lm, x, np.roll(x["token_ids"], -1, axis=1)  # next-token labels


DEEP = {"custom_block": _block_case, "gpt2": _gpt2_case}
DEEP_BATCH = {"custom_block": 32, "gpt2": 4}  # 8 and 4 steps per epoch
GPT2_PRUNED = ["gpt2_backbone/token_embedding"] + [
    f"gpt2_backbone/transformer_layer_{i}/{name}"
    for i in range(2) for name in ("self_attention", "feedforward_intermediate_dense", "feedforward_output_dense")
]
DEEP_PRUNED = {"custom_block": ["stem", "block/up", "block/down", "head"], "gpt2": GPT2_PRUNED}
DEEP_DENSE = {"custom_block": ["block"], "gpt2": ["gpt2_backbone/position_embedding"]}
DEEP_CASES = pytest.mark.parametrize("kind", sorted(DEEP))


def _as_json(config):
    return json.loads(json.dumps(config, default=str))


def _own_dense_weights(model, kind):
    """Weights the traversal leaves dense: the block's own gain, GPT-2's position embedding."""
    if kind == "custom_block":
        return [model.get_layer("block").gain]
    return [model.backbone.get_layer("position_embedding").position_embeddings]


def _deep_train(model, x, y, epochs, kind):
    model.fit(x, y, epochs=epochs, batch_size=DEEP_BATCH[kind], shuffle=False, verbose=0,
              callbacks=[kp.UpdatePruningStep()])


@DEEP_CASES
def test_layers_inside_custom_layers_hit_exact_sparsity_with_zeros_after_every_step(kind):
    model, x, y = DEEP[kind]()
    schedule = kp.PolynomialDecay(0.2, 0.8, begin_step=0, end_step=6, frequency=2)
    pruned = compile_classifier(kp.prune_low_magnitude(model, schedule), OPTIMIZERS["adamw"]())
    assert isinstance(pruned, kp.PrunedModel) and pruned.layer is model
    assert pruned.pruned_layers == DEEP_PRUNED[kind]
    assert [path for path, _ in pruned.left_dense] == DEEP_DENSE[kind]
    # The model's own variables are the ones pruned: no copy, no wrapper.
    own = {id(w) for w in model.weights}
    assert all(id(w) in own for w in pruned.prunable_weights())
    recorder = StepRecorder()
    pruned.fit(x, y, epochs=2, batch_size=DEEP_BATCH[kind], verbose=0,
               callbacks=[kp.UpdatePruningStep(), recorder])
    steps = 2 * len(y) // DEEP_BATCH[kind]
    assert len(recorder.masks) == steps and pruning_steps(pruned) == [steps]
    assert recorder.violations == 0
    assert len(recorder.masks[-1]) == len(pruned.prunable_weights()) >= len(DEEP_PRUNED[kind])
    for weight, keep in zip(pruned.prunable_weights(), pruned.masks(), strict=True):
        values = keras.ops.convert_to_numpy(weight)
        assert np.count_nonzero(values == 0) == masks.prune_count(0.8, values.size), weight.path
        assert int((~keep).sum()) == masks.prune_count(0.8, values.size)
    for weight in _own_dense_weights(model, kind):
        assert np.count_nonzero(keras.ops.convert_to_numpy(weight) == 0) == 0, weight.path


@DEEP_CASES
def test_layers_inside_custom_layers_save_mid_pruning_and_resume_exactly(tmp_path, kind):
    model, x, y = DEEP[kind](dropout=0.0)  # dropout draws would differ between the runs
    schedule = kp.PolynomialDecay(0.1, 0.85, begin_step=1, end_step=12, frequency=2)
    reference = compile_classifier(kp.prune_low_magnitude(model, schedule))
    interrupted = compile_classifier(kp.prune_low_magnitude(twin(model), schedule))
    _deep_train(reference, x, y, 4, kind)
    _deep_train(interrupted, x, y, 2, kind)
    saved_masks, saved_step = interrupted.masks(), pruning_steps(interrupted)
    file = os.fspath(tmp_path / "mid.keras")
    interrupted.save(file)
    resumed = keras.saving.load_model(file)  # keras_prune's classes need no custom_objects
    assert isinstance(resumed, kp.PrunedModel) and type(resumed.layer) is type(model)
    assert resumed.pruned_layers == DEEP_PRUNED[kind] and resumed.pruning_schedule == schedule
    assert pruning_steps(resumed) == saved_step == [2 * len(y) // DEEP_BATCH[kind]]
    for ka, kb in zip(saved_masks, resumed.masks(), strict=True):
        np.testing.assert_array_equal(ka, kb)
    _deep_train(resumed, x, y, 2, kind)
    assert pruning_steps(resumed) == pruning_steps(reference) == [4 * len(y) // DEEP_BATCH[kind]]
    for ka, kb in zip(reference.masks(), resumed.masks(), strict=True):
        np.testing.assert_array_equal(ka, kb)
    for wa, wb in zip(reference.get_weights(), resumed.get_weights(), strict=True):
        np.testing.assert_allclose(wa, wb, rtol=1e-5, atol=1e-6)


@DEEP_CASES
def test_strip_hands_back_the_model_with_its_class_and_config(tmp_path, kind):
    model, x, y = DEEP[kind]()
    config = model.get_config()
    pruned = compile_classifier(kp.prune_low_magnitude(model, kp.ConstantSparsity(0.8, 0)))
    _deep_train(pruned, x, y, 1, kind)
    expected = keras.ops.convert_to_numpy(pruned(x))
    stripped = kp.strip_pruning(pruned)
    assert stripped is model and type(stripped) is type(model)
    assert stripped.get_config() == config
    assert not collect_pruning(stripped)
    for weight in pruned.prunable_weights():
        assert weight.constraint is None, weight.path  # the masks no longer hold the variables
        values = keras.ops.convert_to_numpy(weight)
        assert np.count_nonzero(values == 0) == masks.prune_count(0.8, values.size), weight.path
        assert not np.signbit(values[values == 0]).any()  # +0.0
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(stripped(x)), expected)
    file = os.fspath(tmp_path / "stripped.keras")
    stripped.save(file)
    loaded = keras.saving.load_model(file)
    assert type(loaded) is type(model)
    assert _as_json(loaded.get_config()) == _as_json(config)  # saving turns tuples into lists
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)), expected, rtol=1e-6, atol=1e-6)
    kp.prune_low_magnitude(stripped)  # no pruning state is left behind: it can be pruned again
