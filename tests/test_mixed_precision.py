"""Pruning under Keras mixed precision: float32 masks where the variables are, exact zeros.

Under ``mixed_float16`` / ``mixed_bfloat16`` a layer computes in half precision but keeps its
variables in float32, and ``compile`` wraps the optimizer in a loss-scale optimizer (float16),
which skips steps whose gradients overflow. Pruned weights must stay exactly 0.0 through all
of it, the masks must be float32 like the variables they mask, and one-shot pruning must
rank the float32 weights, not their half-precision casts.
"""

import keras
import numpy as np
import pytest

import keras_prune as kp

from helpers import compile_classifier, dense_data

pytestmark = pytest.mark.core

POLICIES = ["mixed_float16", "mixed_bfloat16"]


@pytest.fixture(params=POLICIES)
def policy(request):
    keras.mixed_precision.set_global_policy(request.param)
    yield request.param
    keras.mixed_precision.set_global_policy("float32")


def cnn():
    return keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(6, 3, activation="relu", name="conv"),
        keras.layers.Flatten(),
        keras.layers.Dense(16, activation="relu", name="hidden"),
        keras.layers.Dense(3, name="logits"),
        keras.layers.Activation("linear", dtype="float32", name="out"),  # float32 logits, as Keras advises
    ])


def image_data(n=128):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 8, 8, 1)).astype("float32")
    return x, (x.reshape(n, -1)[:, :3].argmax(axis=1)).astype("int64")


class ZerosHeld(keras.callbacks.Callback):
    """Fails the fit at the first step after which a pruned weight is not exactly 0.0."""

    def __init__(self, pruned):
        super().__init__()
        self.pruned, self.steps = pruned, 0

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        for weight, keep in zip(self.pruned.prunable_weights(), self.pruned.masks()):
            values = keras.ops.convert_to_numpy(weight)
            assert not values[~keep].any(), f"{weight.path} moved off zero at step {self.steps}"


def test_gradual_pruning_holds_exact_zeros_with_float32_masks(policy):
    model = cnn()
    assert model.get_layer("conv").compute_dtype != "float32"
    pruned = kp.prune_low_magnitude(model, kp.PolynomialDecay(0.0, 0.75, 0, 12, frequency=3))
    compile_classifier(pruned)
    if policy == "mixed_float16":
        assert isinstance(pruned.optimizer, keras.optimizers.LossScaleOptimizer)
    x, y = image_data()
    check = ZerosHeld(pruned)
    pruned.fit(x, y, epochs=2, batch_size=16, callbacks=[kp.UpdatePruningStep(), check], verbose=0)
    assert check.steps == 16
    assert {m.dtype for m in pruned.mask_variables} == {"float32"}
    assert {w.dtype for w in pruned.prunable_weights()} == {"float32"}
    for keep in pruned.masks():
        assert 1 - keep.mean() == pytest.approx(0.75, abs=1 / keep.size)
    stripped = kp.strip_pruning(pruned)
    for name in ("conv", "hidden", "logits"):
        kernel = keras.ops.convert_to_numpy(stripped.get_layer(name).kernel)
        assert np.mean(kernel == 0) == pytest.approx(0.75, abs=1 / kernel.size)
        assert not np.signbit(kernel[kernel == 0]).any()  # +0.0, as saved models hold


def test_pruned_model_saved_under_a_policy_resumes(policy, tmp_path):
    x, y = dense_data()
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(24, activation="relu"),
                              keras.layers.Dense(3, dtype="float32")])
    pruned = compile_classifier(kp.prune_low_magnitude(model, kp.ConstantSparsity(0.5, 0, frequency=4)))
    pruned.fit(x, y, epochs=1, batch_size=32, callbacks=[kp.UpdatePruningStep()], verbose=0)
    pruned.save(tmp_path / "pruned.keras")
    again = keras.saving.load_model(tmp_path / "pruned.keras")
    assert again.layer.layers[0].dtype_policy.name == policy
    for before, after in zip(pruned.masks(), again.masks()):
        np.testing.assert_array_equal(before, after)
    check = ZerosHeld(again)
    again.fit(x, y, epochs=1, batch_size=32, callbacks=[kp.UpdatePruningStep(), check], verbose=0)
    assert check.steps == 8


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_one_shot_ranks_float32_weights_exactly(policy, method):
    model = cnn()
    x, _ = image_data(64)
    model(x[:2])
    before = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
    report = kp.oneshot_prune(model, x, method=method, sparsity=0.6, batch_size=16)
    assert report.totals["sparsity"] == pytest.approx(0.6, abs=0.01)
    for name in ("conv", "hidden", "logits"):
        kernel = keras.ops.convert_to_numpy(model.get_layer(name).kernel)
        assert kernel.dtype == np.float32
        assert np.mean(kernel == 0) == pytest.approx(0.6, abs=1 / kernel.size)
    if method == "magnitude":  # the smallest float32 magnitudes go, as in full precision
        for weight, old in zip(model.trainable_weights, before):
            if old.ndim < 2:
                continue
            new = keras.ops.convert_to_numpy(weight)
            assert np.abs(old[new == 0]).max() <= np.abs(old[new != 0]).min()
    assert np.isfinite(keras.ops.convert_to_numpy(model(x[:4]))).all()
