"""FLOPs counted per layer, for one example (batch size 1).

A multiply-add counts as 2 FLOPs; bias additions are not counted. Dense, convolutions (plain, transposed, depthwise,
separable) and MultiHeadAttention are counted exactly from their shapes; normalization,
activations, merges and pooling count one FLOP per output element (per pooled input for
pooling). Layers without arithmetic (Flatten, Reshape, Dropout, InputLayer) count 0. The count
of each layer type comes from its handler (``LayerHandler.flops``, :mod:`keras_prune.handlers`);
a layer whose handler has none counts one FLOP per output element.
"""

from __future__ import annotations

import keras

from keras_prune import handlers
from keras_prune.structured.graph import walk_nodes


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


def _layer_flops(layer, inputs, outputs) -> int:
    handler = handlers.handler_for(layer)
    if handler is not None and handler.flops is not None:
        return int(handler.flops(layer, inputs, outputs))
    return sum(handlers.shape_size(o) for o in outputs)
