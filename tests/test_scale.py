"""Selection without concatenation: the streamed k-th key and the one-shot cuts equal the
sort-based ranking exactly (ties, zeros, -0.0, denormals, equal values, tiny layers)."""

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from keras_prune import _host, magnitude_prune, oneshot
from keras_prune.analysis.report import detect_pattern, unstructured_from_prefix
from keras_prune.masks import (
    global_sparsity_masks,
    key_to_value,
    prune_count,
    sortable_keys,
    streamed_kth_key,
)
from keras_prune.oneshot import plan_masks

pytestmark = pytest.mark.core

DENORMAL = float(np.nextafter(np.float32(0), np.float32(1)))
SPECIAL = [0.0, -0.0, DENORMAL, -DENORMAL, 1e-38, 1.0, -1.0, 2.5, 3.0e38]


def sorted_masks(arrays, sparsity):
    """The reference: concatenate, stable sort, prune the first k (earlier index first)."""
    flat = np.concatenate([np.ravel(a) for a in arrays])
    keep = np.ones(flat.size, dtype=bool)
    keep[np.argsort(flat, kind="stable")[: prune_count(sparsity, flat.size)]] = False
    return np.split(keep, np.cumsum([np.size(a) for a in arrays])[:-1])


def floats(dtype):
    return hnp.arrays(dtype, st.integers(1, 40), elements=st.one_of(
        st.sampled_from(SPECIAL), st.floats(-4, 4, width=8 * np.dtype(dtype).itemsize)))


@settings(max_examples=200, deadline=None)
@given(st.lists(floats(np.float32), min_size=1, max_size=4), st.floats(0, 1))
def test_global_masks_equal_the_sorted_ranking(arrays, sparsity):
    expected = sorted_masks(arrays, sparsity)
    for mask, want in zip(global_sparsity_masks(arrays, sparsity), expected):
        np.testing.assert_array_equal(mask.ravel(), want)


@settings(max_examples=100, deadline=None)
@given(st.lists(floats(np.float64), min_size=1, max_size=3), st.floats(0, 1))
def test_global_masks_float64(arrays, sparsity):
    for mask, want in zip(global_sparsity_masks(arrays, sparsity), sorted_masks(arrays, sparsity)):
        np.testing.assert_array_equal(mask.ravel(), want)


@settings(max_examples=150, deadline=None)
@given(hnp.arrays(np.float32, st.integers(1, 300), elements=st.one_of(
    st.sampled_from([0.0, DENORMAL, 1.0, 1.0000001, 7.0]), st.floats(0, 8, width=32))),
    st.integers(1, 8), st.data())
def test_streamed_kth_equals_partition(values, chunk, data):
    magnitudes = np.abs(values)
    k = data.draw(st.integers(1, magnitudes.size))
    keys = magnitudes.view(np.uint32)
    chunks = lambda: [keys[i:i + chunk] for i in range(0, keys.size, chunk)]  # noqa: E731
    expected = np.partition(magnitudes, k - 1)[k - 1]
    for sample in (None, keys[::3], keys[:1]):
        for limit in (1, 4, 1 << 20):  # tiny limits force the radix passes
            kth, below = streamed_kth_key(chunks, k, keys.size, sample=sample, limit=limit)
            assert key_to_value(kth, np.float32, signed=False) == expected
            assert below == int(np.count_nonzero(magnitudes < expected))


def test_sortable_keys_order_and_signed_zero():
    values = np.array([-3e38, -1.0, -DENORMAL, -0.0, 0.0, DENORMAL, 1.0, 3e38], "float32")
    keys = sortable_keys(values)
    assert keys[3] == keys[4] and (np.diff(keys.astype(np.int64))[[0, 1, 2, 4, 5, 6]] > 0).all()
    assert [key_to_value(int(k), np.float32) for k in keys[[0, 6]]] == [values[0], values[6]]


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.999])
def test_identical_values_and_sparsity_extremes(sparsity):
    arrays = [np.full((5, 3), 2.0, "float32"), np.zeros(4, "float32"), np.full(1, 2.0, "float32")]
    for mask, want in zip(global_sparsity_masks(arrays, sparsity), sorted_masks(arrays, sparsity)):
        np.testing.assert_array_equal(mask.ravel(), want)
    everything = global_sparsity_masks(arrays, 1.0)
    assert not any(m.any() for m in everything)


def model_from(kernels):
    model = keras.Sequential([keras.Input((kernels[0].shape[0],))]
                             + [keras.layers.Dense(k.shape[1], name=f"d{i}") for i, k in enumerate(kernels)])
    for layer, kernel in zip(model.layers, kernels):
        layer.kernel.assign(kernel)
    return model


def adversarial_kernels(seed):
    rng = np.random.default_rng(seed)
    first = rng.choice(np.array([0.0, -0.0, DENORMAL, -DENORMAL, 0.5, -0.5, 1.0], "float32"), size=(6, 5))
    second = np.round(rng.normal(size=(5, 1)) * 2).astype("float32") / 2  # many ties, a tiny layer
    third = rng.normal(size=(1, 3)).astype("float32")
    return [first, second, third]


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("sparsity", [0.0, 0.2, 0.5, 0.9, 0.99])
@pytest.mark.parametrize("seed", range(3))
def test_magnitude_prune_equals_the_sorted_ranking(scope, sparsity, seed):
    kernels = adversarial_kernels(seed)
    model = model_from(kernels)
    report = magnitude_prune(model, sparsity=sparsity, scope=scope)
    after = [keras.ops.convert_to_numpy(layer.kernel) for layer in model.layers]
    expected = (sorted_masks([np.abs(k) for k in kernels], sparsity) if scope == "global"
                else [sorted_masks([np.abs(k)], sparsity)[0] for k in kernels])
    for old, new, keep in zip(kernels, after, expected):
        np.testing.assert_array_equal(new.ravel(), np.where(keep, old.ravel(), 0.0))
        assert not np.signbit(new.ravel()[~keep]).any()  # pruned means +0.0
    for layer, new in zip(model.layers, after):
        row = report.layer(layer.name)
        assert row.sparsity == pytest.approx(1 - np.count_nonzero(new) / new.size)
        assert row.pattern == (detect_pattern(new))
    masks = plan_masks(model_from(kernels), sparsity=sparsity, scope=scope)
    for (_, keep), want in zip(masks.values(), expected):
        np.testing.assert_array_equal(keep.ravel(), want)


def test_threshold_and_report_on_a_larger_model_match_detection():
    rng = np.random.default_rng(5)
    kernels = [rng.normal(size=(64, 48)).astype("float32"), rng.normal(size=(48, 8)).astype("float32")]
    model = model_from(kernels)
    report = magnitude_prune(model, threshold=0.7)
    for layer, old in zip(model.layers, kernels):
        new = keras.ops.convert_to_numpy(layer.kernel)
        np.testing.assert_array_equal(new == 0, np.abs(old) <= 0.7)
        assert report.layer(layer.name).pattern == detect_pattern(new) == "unstructured"


def test_non_finite_weight_in_a_later_layer_changes_nothing():
    kernels = adversarial_kernels(0)
    kernels[2][0, 1] = np.inf
    model = model_from(kernels)
    for scope in ("global", "layer"):
        with pytest.raises(ValueError, match="d2.*NaN or infinite"):
            magnitude_prune(model, sparsity=0.5, scope=scope)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.layers[0].kernel), kernels[0])


@pytest.mark.parametrize("shape", [(64, 16), (32,), (3, 3, 8, 4)])
def test_prefix_rule_never_contradicts_detection(shape):
    rng = np.random.default_rng(2)
    for density in (0.1, 0.5, 0.9):
        zero = rng.random(shape) < density
        weights = np.where(zero, 0.0, 1.0)
        if unstructured_from_prefix(zero[: max(1, shape[0] // 2)], shape):
            assert detect_pattern(weights) == "unstructured"
    blocky = np.kron(rng.random((8, 2)) < 0.5, np.ones((4, 8), bool))  # (32, 16) in 4x8 blocks
    assert not unstructured_from_prefix(blocky[:16], blocky.shape)


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_many_chunks_and_a_narrow_sample_equal_the_sorted_ranking(scope, monkeypatch):
    """Ties spread over many chunks and layers, a sample bracket that often misses."""
    monkeypatch.setattr(_host, "CHUNK", 37)
    monkeypatch.setattr(oneshot, "STREAM_SAMPLE", 64)
    rng = np.random.default_rng(7)
    kernels = [np.round(rng.normal(size=shape) * 3).astype("float32") / 3
               for shape in [(40, 30), (30, 7), (7, 50)]]
    kernels[0][:5] = 0.0
    for sparsity in (0.1, 0.37, 0.5, 0.93):
        model = model_from(kernels)
        report = magnitude_prune(model, sparsity=sparsity, scope=scope)
        expected = (sorted_masks([np.abs(k) for k in kernels], sparsity) if scope == "global"
                    else [sorted_masks([np.abs(k)], sparsity)[0] for k in kernels])
        for layer, old, keep in zip(model.layers, kernels, expected):
            new = keras.ops.convert_to_numpy(layer.kernel)
            np.testing.assert_array_equal(new.ravel(), np.where(keep, old.ravel(), 0.0))
            assert not np.signbit(new.ravel()[~keep]).any()
            assert report.layer(layer.name).pattern == detect_pattern(new)


def test_a_view_taken_before_pruning_keeps_the_old_values():
    kernels = adversarial_kernels(1)
    model = model_from(kernels)
    before = _host.view(model.layers[0].kernel)
    assert not before.flags.writeable
    magnitude_prune(model, sparsity=0.6, scope="global")
    np.testing.assert_array_equal(before, kernels[0])
    after = keras.ops.convert_to_numpy(model.layers[0].kernel)
    assert np.count_nonzero(after) < np.count_nonzero(kernels[0])
