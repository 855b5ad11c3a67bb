"""Calibrated one-shot pruning: linear views, the criteria, block-by-block calibration, bad input."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_prune import magnitude_prune, oneshot_prune
from keras_prune.calibration import InputStatistics, calibration_batches
from keras_prune.criteria import Magnitude, SparseGPT, Wanda
from keras_prune.linear_views import linear_view
from keras_prune.masks import prune_count

pytestmark = pytest.mark.core

RNG = np.random.default_rng(0)


def numpy(value):
    return keras.ops.convert_to_numpy(value)


VIEW_LAYERS = {
    "dense": (lambda: keras.layers.Dense(6, use_bias=False), (3, 7, 5)),
    "einsum_query": (lambda: keras.layers.EinsumDense("btd,dnh->btnh", (None, 2, 3)), (2, 4, 5)),
    "einsum_output": (lambda: keras.layers.EinsumDense("btnh,nhd->btd", (None, 5)), (2, 4, 2, 3)),
    "einsum_ellipsis": (lambda: keras.layers.EinsumDense("...b,bc->...c", 4), (2, 3, 6)),
    "conv1d_causal_dilated": (lambda: keras.layers.Conv1D(4, 3, padding="causal", dilation_rate=2, use_bias=False),
                              (2, 11, 3)),
    "conv1d_same_strided": (lambda: keras.layers.Conv1D(4, 4, strides=2, padding="same", use_bias=False), (2, 9, 3)),
    "conv2d_valid": (lambda: keras.layers.Conv2D(5, (3, 2), use_bias=False), (2, 7, 6, 3)),
    "conv2d_same_strided": (lambda: keras.layers.Conv2D(5, 3, strides=2, padding="same", use_bias=False),
                            (2, 8, 7, 2)),
    "conv3d": (lambda: keras.layers.Conv3D(2, 2, use_bias=False), (1, 4, 4, 4, 2)),
}


@pytest.mark.parametrize("name", sorted(VIEW_LAYERS))
def test_a_linear_view_reproduces_its_layer(name):
    make, shape = VIEW_LAYERS[name]
    layer = make()
    x = RNG.normal(size=shape).astype("float32")
    out = numpy(layer(x))
    view = linear_view(layer, layer.kernel)
    matrix = view.to_matrix(numpy(layer.kernel))
    np.testing.assert_allclose((view.features(x) @ matrix).ravel(), out.ravel(), atol=1e-4)
    np.testing.assert_array_equal(view.from_matrix(matrix), numpy(layer.kernel))


def test_layers_that_are_not_plain_linear_kernels_have_no_view():
    embedding = keras.layers.Embedding(10, 4)
    embedding.build((None, 3))
    grouped = keras.layers.Conv2D(4, 3, groups=2)
    grouped.build((None, 8, 8, 4))
    batched = keras.layers.EinsumDense("bnd,nde->bne", (3, 5))
    batched.build((None, 3, 4))
    assert linear_view(embedding, embedding.embeddings) is None
    assert linear_view(grouped, grouped.kernel) is None
    assert linear_view(batched, batched.kernel) is None


def reconstruction_error(x, w, pruned):
    return float(np.linalg.norm(x @ w - x @ pruned))


def test_sparsegpt_reconstructs_better_than_magnitude_with_as_many_zeros():
    x = RNG.normal(size=(512, 32)) * RNG.uniform(0.1, 3.0, size=32)  # uneven input scales
    w = RNG.normal(size=(32, 16))
    stats = InputStatistics(32, gram=True)
    stats.add(x)
    count = prune_count(0.6, w.size)
    sparse_gpt = SparseGPT(block_columns=8).prune(w, stats, count)
    magnitude = Magnitude().prune(w, stats, count)
    assert (~sparse_gpt.keep).sum() == (~magnitude.keep).sum() == count
    assert (sparse_gpt.matrix[~sparse_gpt.keep] == 0).all()
    assert reconstruction_error(x, w, sparse_gpt.matrix) < 0.8 * reconstruction_error(x, w, magnitude.matrix)


@pytest.mark.parametrize("m_by_n", [(2, 4), (4, 8)])
@pytest.mark.parametrize("criterion", [SparseGPT(block_columns=6), Wanda()])
def test_m_by_n_groups_are_exact_along_the_inputs(criterion, m_by_n):
    x, w = RNG.normal(size=(256, 24)), RNG.normal(size=(24, 5))
    stats = InputStatistics(24, gram=True)
    stats.add(x)
    result = criterion.prune(w, stats, None, m_by_n)
    groups = (~result.keep).reshape(24 // m_by_n[1], m_by_n[1], 5).sum(axis=1)
    assert (groups == m_by_n[0]).all()
    assert (result.matrix[~result.keep] == 0).all()


def test_wanda_compares_within_each_output_by_weight_times_input_norm():
    x = RNG.normal(size=(100, 6)) * np.array([1, 1, 1, 10, 10, 10])
    w = RNG.normal(size=(6, 3))
    stats = InputStatistics(6)
    stats.add(x)
    result = Wanda().prune(w, stats, 9)
    assert ((~result.keep).sum(axis=0) == 3).all()
    for column in range(3):
        score = np.abs(w[:, column]) * np.linalg.norm(x, axis=0)
        np.testing.assert_array_equal(~result.keep[:, column], np.isin(np.arange(6), np.argsort(score)[:3]))


def two_layer_model():
    return keras.Sequential([keras.Input((12,)), keras.layers.Dense(10, activation="relu", name="hidden"),
                             keras.layers.Dense(4, name="out")])


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_sparsity_zero_leaves_every_weight_bit_identical(method):
    model = two_layer_model()
    before = [numpy(w).copy() for w in model.weights]
    oneshot_prune(model, RNG.normal(size=(40, 12)).astype("float32"), method=method, sparsity=0.0)
    for old, new in zip(before, model.weights):
        np.testing.assert_array_equal(old, numpy(new))


@pytest.mark.parametrize("compensate", [False, True])
def test_each_layer_is_calibrated_on_the_outputs_of_the_already_pruned_layers_before_it(compensate):
    model = two_layer_model()
    x = RNG.normal(size=(64, 12)).astype("float32")
    (w1, b1), (w2, _) = [(numpy(layer.kernel), numpy(layer.bias)) for layer in model.layers]
    expected = []
    inputs = dense = x.astype(np.float64)
    for w, b in ((w1, b1), (w2, None)):
        stats = InputStatistics(w.shape[0], gram=True)
        stats.add(inputs)
        if compensate and w is w2:  # the target: what the unpruned first layer would give
            stats.add_dense(inputs, dense)
        pruned = SparseGPT().prune(w, stats, prune_count(0.5, w.size)).matrix
        expected.append(pruned)
        if b is not None:
            inputs, dense = np.maximum(inputs @ pruned + b, 0), np.maximum(dense @ w + b, 0)
    report = oneshot_prune(model, x, method="sparsegpt", sparsity=0.5, batch_size=16, compensate=compensate)
    for layer, want in zip(model.layers, expected):
        np.testing.assert_allclose(numpy(layer.kernel), want, atol=1e-5)
    assert report.settings["method"] == "sparsegpt" and report.settings["samples"] == 64


def test_compensating_for_earlier_layers_brings_the_output_closer_to_the_dense_model():
    model = keras.Sequential([keras.Input((24,)), *[keras.layers.Dense(24, activation="tanh") for _ in range(3)],
                              keras.layers.Dense(4)])
    x = RNG.normal(size=(256, 24)).astype("float32")
    reference, start = numpy(model(x)), model.get_weights()
    errors = {}
    for compensate in (False, True):
        model.set_weights(start)
        oneshot_prune(model, x, sparsity=0.8, compensate=compensate)
        errors[compensate] = float(np.mean((numpy(model(x)) - reference) ** 2))
    assert errors[True] < 0.8 * errors[False]


def small_cnn():
    inputs = keras.Input((12, 12, 2))
    h = keras.layers.Conv2D(8, 3, activation="relu", name="conv1")(inputs)
    h = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="conv2")(h)
    h = keras.layers.Flatten()(h)
    return keras.Model(inputs, keras.layers.Dense(5, name="logits")(h))


def test_global_scope_takes_each_layers_count_from_the_global_magnitude_ranking():
    model = small_cnn()
    twin = small_cnn()
    twin.set_weights(model.get_weights())
    magnitude_prune(twin, sparsity=0.7, scope="global")
    report = oneshot_prune(model, RNG.normal(size=(32, 12, 12, 2)).astype("float32"), sparsity=0.7,
                           scope="global")
    for ours, theirs in zip(model.layers, twin.layers):
        if hasattr(ours, "kernel"):
            assert (numpy(ours.kernel) == 0).sum() == (numpy(theirs.kernel) == 0).sum(), ours.name
    assert report.totals["sparsity"] == pytest.approx(0.7, abs=1e-3)


def test_calibration_data_forms_give_the_same_result():
    x = RNG.normal(size=(48, 12)).astype("float32")
    y = RNG.integers(0, 4, size=48)
    reference = two_layer_model()
    start = reference.get_weights()
    oneshot_prune(reference, x, sparsity=0.5, samples=40)
    for data in [(x, y), [x[:16], x[16:32], x[32:]], (batch for batch in (x[:20], x[20:]))]:
        model = two_layer_model()
        model.set_weights(start)
        report = oneshot_prune(model, data, sparsity=0.5, samples=40)
        assert report.settings["samples"] == 40
        for a, b in zip(reference.weights, model.weights):
            np.testing.assert_allclose(numpy(a), numpy(b), atol=1e-5)


@pytest.mark.tensorflow_only
def test_a_tf_data_dataset_is_read_up_to_the_sample_count():
    import tensorflow as tf

    x = RNG.normal(size=(50, 12)).astype("float32")
    dataset = tf.data.Dataset.from_tensor_slices((x, np.zeros(50))).batch(8)
    batches = calibration_batches(dataset, samples=20)
    assert [b.shape[0] for b in batches] == [8, 8, 4]
    np.testing.assert_array_equal(np.concatenate(batches), x[:20])


def weights_of(model):
    return [numpy(w).copy() for w in model.weights]


def assert_unchanged(model, before):
    for old, new in zip(before, model.weights):
        np.testing.assert_array_equal(old, numpy(new))


@pytest.mark.parametrize(
    ("data", "kwargs", "error", "message"),
    [
        (None, {"sparsity": 0.5}, ValueError, "calibration_data` is required"),
        (np.zeros((8, 5), "float32"), {"sparsity": 0.5}, ValueError, "does not fit model"),
        (np.zeros((0, 12), "float32"), {"sparsity": 0.5}, ValueError, "holds no examples"),
        ("text", {"sparsity": 0.5}, TypeError, "must be arrays the model accepts"),
        (np.zeros((8, 12), "float32"), {"sparsity": 0.5, "method": "obs"}, ValueError, "`method` must be one of"),
        (np.zeros((8, 12), "float32"), {"sparsity": 0.5, "damping": 0.0}, ValueError, "`damping` must be"),
        (np.zeros((8, 12), "float32"), {"sparsity": 0.5, "samples": 0}, ValueError, "`samples` must be >= 1"),
        (np.zeros((8, 12), "float32"), {}, ValueError, "Pass exactly one"),
        (np.zeros((8, 12), "float32"), {"sparsity_m_by_n": (2, 4), "scope": "global"}, ValueError, "scope='layer'"),
    ],
)
def test_bad_input_is_refused_before_any_weight_changes(data, kwargs, error, message):
    model = two_layer_model()
    before = weights_of(model)
    with pytest.raises(error, match=message):
        oneshot_prune(model, data, **kwargs)
    assert_unchanged(model, before)


def test_nan_activations_are_refused_and_the_model_is_left_as_it_was():
    model = two_layer_model()
    before = weights_of(model)
    x = RNG.normal(size=(32, 12)).astype("float32")
    x[20, 3] = np.nan  # the first batch, which checks that the data fits, is clean
    with pytest.raises(ValueError, match="NaN or infinite inputs"):
        oneshot_prune(model, x, sparsity=0.5, batch_size=16)
    assert_unchanged(model, before)


def test_an_error_after_some_blocks_were_pruned_restores_them(monkeypatch):
    model = two_layer_model()
    before = weights_of(model)
    calls = []
    original = SparseGPT.prune

    def fail_on_second(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SparseGPT, "prune", fail_on_second)
    with pytest.raises(KeyboardInterrupt):
        oneshot_prune(model, RNG.normal(size=(32, 12)).astype("float32"), sparsity=0.5)
    assert len(calls) == 2
    assert_unchanged(model, before)


def test_weights_it_cannot_calibrate_are_pruned_by_magnitude_and_reported():
    inputs = keras.Input((6,), dtype="int32")
    h = keras.layers.Embedding(20, 8, name="embed")(inputs)
    out = keras.layers.Dense(3, name="head")(keras.layers.Flatten()(h))
    model = keras.Model(inputs, out)
    report = oneshot_prune(model, RNG.integers(0, 20, size=(16, 6)), method="wanda", sparsity=0.5)
    notes = {w.layer: w.message for w in report.warnings}
    assert "not a plain linear kernel; pruned by magnitude" in notes["embed"]
    assert (numpy(model.get_layer("embed").embeddings) == 0).sum() == prune_count(0.5, 160)
    assert (numpy(model.get_layer("head").kernel) == 0).sum() == prune_count(0.5, 48 * 3)


def test_too_few_rows_for_the_hessian_are_reported():
    model = two_layer_model()
    report = oneshot_prune(model, RNG.normal(size=(5, 12)).astype("float32"), sparsity=0.5)
    assert any("saw 5 calibration rows for 12 inputs" in w.message and "12 samples would give it full rank"
               in w.message for w in report.warnings)


def test_a_singular_hessian_is_dampened_more_and_the_report_says_so():
    model = two_layer_model()
    x = np.repeat(RNG.normal(size=(40, 1)), 12, axis=1).astype("float32")  # rank 1
    report = oneshot_prune(model, x, sparsity=0.5, damping=1e-12)
    assert any("not positive definite with damping 1e-12; dampened with" in w.message for w in report.warnings)
    assert report.totals["sparsity"] == pytest.approx(0.5, abs=0.01)


def test_inplace_false_prunes_a_copy():
    model = two_layer_model()
    before = weights_of(model)
    report = oneshot_prune(model, RNG.normal(size=(32, 12)).astype("float32"), sparsity=0.5, inplace=False)
    assert_unchanged(model, before)
    assert report.model is not model and report.totals["sparsity"] == pytest.approx(0.5, abs=0.01)


BACKEND_SCRIPT = """
import json, sys
import keras, numpy as np
from keras_prune import oneshot_prune
keras.utils.set_random_seed(1)
rng = np.random.default_rng(1)
inputs = keras.Input((8, 8, 3))
h = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
h = keras.layers.GlobalAveragePooling2D()(h)
model = keras.Model(inputs, keras.layers.Dense(4)(h))
model.set_weights([rng.normal(size=w.shape).astype("float32") for w in model.weights])
x = rng.normal(size=(24, 8, 8, 3)).astype("float32")
out = {}
for method in ("wanda", "sparsegpt"):
    start = model.get_weights()
    oneshot_prune(model, x, method=method, sparsity_m_by_n=(2, 4) if method == "wanda" else None,
                  sparsity=None if method == "wanda" else 0.6)
    out[method] = [w.tolist() for w in model.get_weights()]
    model.set_weights(start)
json.dump(out, sys.stdout)
"""


@pytest.mark.tensorflow_only
def test_tensorflow_and_jax_give_the_same_pruned_weights():
    results = {}
    for backend in ("tensorflow", "jax"):
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
        done = subprocess.run([sys.executable, "-c", BACKEND_SCRIPT], capture_output=True, text=True, env=env,
                              check=True)
        results[backend] = json.loads(done.stdout.strip().splitlines()[-1])
    for method in ("wanda", "sparsegpt"):
        for a, b in zip(results["tensorflow"][method], results["jax"][method]):
            a, b = np.array(a), np.array(b)
            np.testing.assert_array_equal(a == 0, b == 0)
            np.testing.assert_allclose(a, b, atol=1e-4)


def test_n_by_m_groups_that_do_not_align_with_the_view_fall_back_to_magnitude_and_are_reported():
    inputs = keras.Input((6, 6, 3))  # 3 input channels: no 2:4 group along them in the unfolded view
    h = keras.layers.Conv2D(8, 3, name="rgb")(inputs)
    model = keras.Model(inputs, keras.layers.Conv2D(4, 3, name="next")(h))
    twin = keras.models.clone_model(model)
    twin.set_weights(model.get_weights())
    magnitude_prune(twin, sparsity_m_by_n=(2, 4))
    report = oneshot_prune(model, RNG.normal(size=(16, 6, 6, 3)).astype("float32"), sparsity_m_by_n=(2, 4))
    assert any(w.layer == "rgb" and "pruned by magnitude" in w.message for w in report.warnings)
    np.testing.assert_array_equal(numpy(model.get_layer("rgb").kernel), numpy(twin.get_layer("rgb").kernel))
    groups = (numpy(model.get_layer("next").kernel) == 0).reshape(3, 3, 2, 4, 4).sum(axis=3)
    assert (groups == 2).all()


def test_structured_wanda_importance_sums_weight_times_input_norm_over_each_unit():
    from keras_prune.structured import prune_channels
    from keras_prune.structured.graph import ChannelGraph
    from keras_prune.structured.importance import unit_scores

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, use_bias=False, name="a"),
                              keras.layers.Dense(2, use_bias=False, name="b")])
    x = RNG.normal(size=(50, 3)).astype("float32") * np.array([0.1, 1.0, 10.0], "float32")
    wa, wb = numpy(model.layers[0].kernel), numpy(model.layers[1].kernel)
    hidden_norms = np.linalg.norm(x @ wa, axis=0)
    expected = (np.abs(wa) * np.linalg.norm(x, axis=0)[:, None]).sum(0) + (np.abs(wb) * hidden_norms[:, None]).sum(1)
    scores = unit_scores(ChannelGraph(model), "wanda", x)
    np.testing.assert_allclose(scores[:4], expected, rtol=1e-4)
    small = prune_channels(model, 0.5, importance="wanda", calibration_data=(x, np.zeros(50)))
    assert small.layers[0].units == 2
