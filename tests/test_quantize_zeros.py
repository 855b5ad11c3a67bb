"""Keras' own ``model.quantize`` on a pruned model: do pruned weights stay zero, and export.

What Keras 3.15 does (checked here on every backend the suite runs on):
* ``"int8"`` (per output channel, symmetric ``round(w * 127 / max|w|)``): a pruned weight is
  exactly 0 in the int8 kernel, so the quantized model is exactly as sparse.
* ``"int4"`` with ``Int4QuantizationConfig(block_size=-1)`` (per channel, symmetric): the same,
  in the packed kernel (two int4 per int8 byte) too.
* ``"int4"`` by default (``block_size=128``: asymmetric, one scale and zero point per block of
  128 inputs): a pruned weight is stored as the block's zero point, not 0, but dequantizes to
  exactly 0 (``(zero - zero) * scale``), so the model computes with exact zeros while its
  integer kernel is not sparse.
"""

import warnings

import keras
import numpy as np
import pytest

import keras_prune
from keras_prune.export.sparse import encoding_summary, read_header
from keras_prune.masks import sparsity_mask

pytestmark = pytest.mark.core


def pruned_model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((64,))
    x = keras.layers.Dense(256, activation="relu")(inputs)
    x = keras.layers.Reshape((4, 64))(x)
    x = keras.layers.EinsumDense("abc,cd->abd", output_shape=(4, 32), bias_axes="d")(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(10)(x)
    model = keras.Model(inputs, outputs)
    masks = {}
    for layer in model.layers:
        if hasattr(layer, "kernel"):
            kernel = keras.ops.convert_to_numpy(layer.kernel)
            keep = sparsity_mask(kernel**2, 0.9)
            layer.kernel.assign(np.where(keep, kernel, 0))
            masks[layer.name] = ~keep
    return model, masks


def quantize(model, mode, config=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Layer Reshape does not have a `quantize` method"
        model.quantize(mode, config=config)


def weights(layer):
    return {w.path.split("/")[-1]: keras.ops.convert_to_numpy(w) for w in layer.weights}


def quantized_layers(model, masks):
    layers = [layer for layer in model.layers if layer.name in masks]
    assert all(layer.dtype_policy.quantization_mode for layer in layers)
    return layers


def test_int8_keeps_every_pruned_weight_exactly_zero():
    model, masks = pruned_model()
    quantize(model, "int8")
    for layer in quantized_layers(model, masks):
        kernel = weights(layer)["kernel"]
        assert kernel.dtype == np.int8 and kernel.shape == masks[layer.name].shape
        assert not kernel[masks[layer.name]].any()
        # Only rounding can add zeros (tiny weights); none is lost.
        assert np.count_nonzero(kernel) <= np.count_nonzero(~masks[layer.name])


def test_per_channel_int4_keeps_pruned_weights_zero_in_the_packed_kernel():
    model, masks = pruned_model()
    quantize(model, "int4", keras.quantizers.Int4QuantizationConfig(block_size=-1))
    dense = [layer for layer in quantized_layers(model, masks) if isinstance(layer, keras.layers.Dense)]
    for layer in dense:
        packed = weights(layer)["kernel"]
        mask = masks[layer.name]
        unpacked = keras.ops.convert_to_numpy(keras.quantizers.unpack_int4(packed, mask.shape[-1], axis=-1))
        assert unpacked.shape == mask.shape and not unpacked[mask].any()
        # A packed byte is zero when both its int4 halves are.
        assert np.count_nonzero(packed) <= np.count_nonzero(~mask)


def test_default_int4_stores_pruned_weights_as_the_zero_point_and_dequantizes_them_to_zero():
    model, masks = pruned_model()
    quantize(model, "int4")  # Keras' default: block_size=128, asymmetric with a zero point
    layer = model.layers[1]
    assert isinstance(layer, keras.layers.Dense) and layer.dtype_policy.name.startswith("int4/128")
    w = weights(layer)
    mask = masks[layer.name]
    q = keras.ops.convert_to_numpy(keras.quantizers.unpack_int4(w["kernel"], mask.shape[-1], axis=-1)).astype(np.float32)
    groups = w["g_idx"].astype(np.int64)
    dequantized = (q - w["kernel_zero"][groups].astype(np.float32)) * w["kernel_scale"][groups]
    assert np.all(dequantized[mask] == 0)
    assert q[mask].any()  # the stored integers are the zero points, not zeros


@pytest.mark.parametrize("mode", ["int8", "int4", "int4-per-channel"])
def test_export_sparse_stores_a_keras_quantized_model_as_it_is_and_it_loads_identical(tmp_path, mode):
    model, masks = pruned_model()
    config = keras.quantizers.Int4QuantizationConfig(block_size=-1) if mode == "int4-per-channel" else None
    quantize(model, mode.split("-")[0], config)
    inputs = np.random.default_rng(1).random((5, 64)).astype("float32")
    expected = keras.ops.convert_to_numpy(model(inputs))
    path = keras_prune.export_sparse(model, tmp_path / "q.kpsparse")
    loaded = keras_prune.load_sparse(path)
    assert [layer.dtype_policy.name for layer in loaded.layers] == [layer.dtype_policy.name for layer in model.layers]
    for original, copy in zip(model.weights, loaded.weights):
        assert copy.path == original.path
        actual, wanted = keras.ops.convert_to_numpy(copy), keras.ops.convert_to_numpy(original)
        assert actual.dtype == wanted.dtype and actual.tobytes() == wanted.tobytes()
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(inputs)), expected)
    if mode == "int8":
        # The sparse int8 kernels (at most 255 distinct values) are stored as codebook + rANS.
        kernels = [t for t in read_header(path)["tensors"] if t["dtype"] == "int8"]
        assert kernels and all(t["encoding"] == "codebook" for t in kernels if np.prod(t["shape"]) >= 4096)
        assert encoding_summary(path)["codebook"] >= 1


def test_lossy_values_leave_the_weights_of_keras_quantized_layers_exact(tmp_path):
    model, masks = pruned_model()
    quantize(model, "int8")
    path = keras_prune.export_sparse(model, tmp_path / "q.kpsparse", values="int8")
    header = read_header(path)
    scales = [t for t in header["tensors"] if t["path"].endswith("kernel_scale")]
    assert scales and all(t["quant"] == "none" for t in scales)
    loaded = keras_prune.load_sparse(path)
    for original, copy in zip(model.weights, loaded.weights):
        if original.dtype == "int8" or original.path.endswith("kernel_scale"):
            assert keras.ops.convert_to_numpy(copy).tobytes() == keras.ops.convert_to_numpy(original).tobytes()
