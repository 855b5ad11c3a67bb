"""Fold inference-mode BatchNormalization into the Dense or Conv layer that feeds it.

In inference BatchNorm is a per-channel affine map, ``gamma * (z - mean) / sqrt(var + eps) +
beta``; when ``z`` comes straight from a Dense or Conv with no activation, the map folds into
that layer's kernel and bias and the BatchNorm layer disappears. The outputs stay the same (up
to float rounding) and TensorFlow runs about ten fewer operations per BatchNorm (variable reads,
rsqrt, multiplies, adds). LiteRT's converter does the same by itself. Which layers BatchNorm
folds into, and how many kernels they have, comes from their handlers
(``LayerHandler.fold_kernels``, :mod:`keras_prune.handlers`).
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import layers

from keras_prune import handlers
from keras_prune._keras_compat import inbound_nodes, producer_of
from keras_prune.structured.graph import walk_nodes


def fold_batchnorm(model: keras.Model) -> keras.Model:
    """Returns a copy of ``model`` with each foldable BatchNormalization merged into its producer.

    A BatchNormalization folds when it normalizes the last axis and its only input is the
    output of a Dense, Conv1D/2D/3D, DepthwiseConv1D/2D or SeparableConv1D/2D layer that has
    no activation, feeds nothing else and is not shared. Every other BatchNormalization stays
    as it is. The copy computes what ``model(x, training=False)`` does; it is meant for
    inference and export (fine-tune the original, which still has its BatchNorm layers).

    Args:
        model: a built Sequential or functional model.

    Returns:
        A new, uncompiled model; ``model`` itself is not modified.

    Example:
        >>> model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3),
        ...                           keras.layers.BatchNormalization(), keras.layers.ReLU()])
        >>> [type(layer).__name__ for layer in fold_batchnorm(model).layers]
        ['Conv2D', 'ReLU']
    """
    if not isinstance(model, keras.Model) or not getattr(model, "outputs", None):
        raise TypeError(
            "fold_batchnorm needs a built Sequential or functional model. Received: "
            f"model={model!r}"
        )
    folds = foldable_batchnorms(model)  # BatchNorm name -> producer name
    producers = {producer: bn for bn, producer in folds.items()}

    def clone(layer):
        config = layer.get_config()
        if layer.name in producers:
            config["use_bias"] = True
        return layer.__class__.from_config(config)

    if isinstance(model, keras.Sequential):
        kept = [clone(layer) for layer in model.layers if layer.name not in folds]
        (spec,) = model.inputs
        new = keras.Sequential([keras.Input(batch_shape=spec.shape, dtype=spec.dtype), *kept], name=model.name)
    else:
        def call(layer, *args, **kwargs):
            return args[0] if layer.name in folds else layer(*args, **kwargs)

        new = keras.models.clone_model(model, clone_function=clone, call_function=call)
    for layer in new.layers:
        if layer.name in producers:
            bn = model.get_layer(producers[layer.name])
            layer.set_weights(_folded_weights(model.get_layer(layer.name), bn))
        elif layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return new


def foldable_batchnorms(model: keras.Model) -> dict[str, str]:
    """The BatchNormalization layers :func:`fold_batchnorm` folds, each with its producer."""
    nodes = walk_nodes(model)
    consumers: dict[int, int] = {}
    for tensor in [t for _, node in nodes for t in node.arguments.keras_tensors] + list(model.outputs):
        consumers[id(tensor)] = consumers.get(id(tensor), 0) + 1
    folds = {}
    for layer, node in nodes:
        if not isinstance(layer, layers.BatchNormalization) or len(inbound_nodes(layer)) != 1:
            continue
        if len(node.arguments.keras_tensors) != 1:
            continue
        (tensor,) = node.arguments.keras_tensors
        producer = producer_of(tensor)
        kernels = _kernel_count(producer)
        if (
            kernels
            and layer.axis in (-1, len(tensor.shape) - 1)
            and len(inbound_nodes(producer)) == 1
            and consumers[id(tensor)] == 1
            and producer.get_config().get("activation", "linear") == "linear"
            and len(producer.weights) == kernels + bool(getattr(producer, "use_bias", False))
            and getattr(producer, "data_format", "channels_last") == "channels_last"
        ):
            folds[layer.name] = producer.name
    return folds


def _kernel_count(layer) -> int:
    """How many kernels precede the bias of a layer BatchNorm folds into; 0: it does not fold."""
    if not isinstance(layer, keras.layers.Layer):
        return 0
    handler = handlers.handler_for(layer)
    return 0 if handler is None else handler.fold_kernels


def _folded_weights(producer, bn) -> list[np.ndarray]:
    """``producer``'s kernel(s) and a bias with ``bn``'s affine map applied to its outputs."""
    stats = {name: getattr(bn, name) for name in ("gamma", "beta", "moving_mean", "moving_variance")}
    stats = {name: None if v is None else keras.ops.convert_to_numpy(v).astype("float64")
             for name, v in stats.items()}
    mean, var = stats["moving_mean"], stats["moving_variance"]
    gamma = np.ones_like(mean) if stats["gamma"] is None else stats["gamma"]
    beta = np.zeros_like(mean) if stats["beta"] is None else stats["beta"]
    scale = gamma / np.sqrt(var + bn.epsilon)
    original = producer.get_weights()  # the kernel(s), then the bias if it has one
    weights = [w.astype("float64") for w in original]
    n = _kernel_count(producer)
    kernel = weights[n - 1]  # the one whose trailing axes index the output channels
    # Dense, Conv: the last axis; depthwise: the last two (input channel, multiplier).
    trailing = next((k for k in range(1, kernel.ndim + 1) if math.prod(kernel.shape[-k:]) == scale.size), None)
    if trailing is None:
        raise ValueError(
            f"Cannot fold '{bn.name}' into '{producer.name}': no trailing axes of its kernel "
            f"{kernel.shape} match the {scale.size} channels."
        )
    weights[n - 1] = kernel * scale.reshape(kernel.shape[-trailing:])
    bias = weights[n] if len(weights) > n else np.zeros_like(mean)
    weights = [*weights[:n], (bias - mean) * scale + beta]
    return [w.astype(original[0].dtype) for w in weights]
