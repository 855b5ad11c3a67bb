"""FLOPs counted per layer, for one example (batch size 1).

A multiply-add counts as 2 FLOPs; bias additions are not counted. Dense, convolutions (plain, transposed, depthwise,
separable) and MultiHeadAttention are counted exactly from their shapes; normalization,
activations, merges and pooling count one FLOP per output element (per pooled input for
pooling). Layers without arithmetic (Flatten, Reshape, Dropout, InputLayer) count 0.
"""

from __future__ import annotations

import math

import keras
from keras import layers

from keras_prune.structured.graph import walk_nodes

_FREE = (
    layers.InputLayer, layers.Flatten, layers.Reshape, layers.Dropout, layers.SpatialDropout1D,
    layers.SpatialDropout2D, layers.SpatialDropout3D, layers.Identity, layers.Embedding,
    layers.ZeroPadding1D, layers.ZeroPadding2D, layers.ZeroPadding3D, layers.Cropping1D,
    layers.Cropping2D, layers.Cropping3D, layers.Permute, layers.RepeatVector,
)
_POOL = (
    layers.MaxPooling1D, layers.MaxPooling2D, layers.MaxPooling3D, layers.AveragePooling1D,
    layers.AveragePooling2D, layers.AveragePooling3D,
)


def count_flops(model: keras.Model) -> dict[str, int]:
    """FLOPs of each layer of ``model`` for one example, summed over the layer's calls.

    Example:
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d")])
        >>> count_flops(model)
        {'d': 24}
    """
    flops: dict[str, int] = {}
    for layer, node in walk_nodes(model):
        inputs = [t.shape for t in node.arguments.keras_tensors]
        outputs = [t.shape for t in node.outputs]
        flops[layer.name] = flops.get(layer.name, 0) + _layer_flops(layer, inputs, outputs)
    return flops


def total_flops(model: keras.Model) -> int:
    """All FLOPs of ``model`` for one example (see :func:`count_flops`)."""
    return sum(count_flops(model).values())


def _size(shape) -> int:
    return math.prod(d for d in shape[1:] if d is not None)


def _layer_flops(layer, inputs, outputs) -> int:
    out = outputs[0] if outputs else (None,)
    if isinstance(layer, _FREE):
        return 0
    if isinstance(layer, layers.Dense):
        return 2 * _size(out) * int(inputs[0][-1])
    if isinstance(layer, (layers.SeparableConv1D, layers.SeparableConv2D)):
        k = math.prod(layer.kernel_size)
        cin, mult = int(inputs[0][-1]), layer.depth_multiplier
        spatial = _size(out) // int(out[-1])
        return 2 * spatial * cin * mult * (k + int(out[-1]))
    if isinstance(layer, (layers.DepthwiseConv1D, layers.DepthwiseConv2D)):
        return 2 * _size(out) * math.prod(layer.kernel_size)
    if isinstance(layer, (layers.Conv1DTranspose, layers.Conv2DTranspose, layers.Conv3DTranspose)):
        k = math.prod(layer.kernel_size)
        return 2 * _size(inputs[0]) * k * int(out[-1])
    if isinstance(layer, (layers.Conv1D, layers.Conv2D, layers.Conv3D)):
        k = math.prod(layer.kernel_size)
        return 2 * _size(out) * k * int(inputs[0][-1]) // layer.groups
    if isinstance(layer, layers.MultiHeadAttention):
        return _attention_flops(layer, inputs, out)
    if isinstance(layer, _POOL):
        return _size(out) * math.prod(layer.pool_size)
    if isinstance(layer, (layers.GlobalAveragePooling1D, layers.GlobalAveragePooling2D,
                          layers.GlobalMaxPooling1D, layers.GlobalMaxPooling2D)):
        return _size(inputs[0])
    return sum(_size(o) for o in outputs)


def _attention_flops(layer, inputs, out) -> int:
    query = inputs[0]
    value = inputs[1] if len(inputs) > 1 else query
    key = inputs[2] if len(inputs) > 2 else value
    tq, tv = _size(query) // int(query[-1]), _size(value) // int(value[-1])
    heads, kd = layer.num_heads, layer.key_dim
    vd = layer.value_dim or kd
    projections = tq * int(query[-1]) * heads * kd + tv * int(key[-1]) * heads * kd
    projections += tv * int(value[-1]) * heads * vd + tq * heads * vd * int(out[-1])
    attention = tq * tv * heads * (kd + vd)
    return 2 * (projections + attention)
