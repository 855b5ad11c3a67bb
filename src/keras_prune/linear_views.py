"""Kernels as matrices: ``outputs = features(inputs) @ matrix``, for Dense, EinsumDense and Conv.

Calibrated pruning (Wanda, SparseGPT) scores a kernel from the inputs its layer sees. It needs
the kernel as a 2-D matrix ``(features, outputs)`` and the layer's input as rows of those
features: a Dense input is already such rows, an EinsumDense input is transposed so the
summed axes come last, and a convolution's input is unfolded into one row per output position
(its patches, in the kernel's own ``(*window, channels)`` order). Features are ordered so the
input axis of :func:`keras_prune.handlers.input_axis` varies fastest: consecutive groups of
features are the N:M groups of gradual and magnitude pruning.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import keras
import numpy as np

from keras_prune._keras_compat import all_layers, own_variables


@dataclasses.dataclass(frozen=True)
class LinearView:
    """How one kernel of a layer acts as a matrix on rows of the layer's input.

    Attributes:
        layer: the layer whose ``call`` receives the inputs.
        variable: the kernel.
        features: ``inputs -> (rows, K)`` array, one row per output position.
        to_matrix: kernel array -> ``(K, outputs)`` matrix.
        from_matrix: ``(K, outputs)`` matrix -> kernel array of the kernel's shape.
        size: ``K``, the number of input features.
    """

    layer: keras.layers.Layer
    variable: object
    features: Callable[[np.ndarray], np.ndarray]
    to_matrix: Callable[[np.ndarray], np.ndarray]
    from_matrix: Callable[[np.ndarray], np.ndarray]
    size: int


def linear_view(layer: keras.layers.Layer, variable) -> LinearView | None:
    """The :class:`LinearView` of ``variable`` in ``layer``, or ``None`` if it is not a plain
    linear kernel (an Embedding, a grouped or transposed convolution, an RNN kernel...).

    Example:
        >>> dense = keras.layers.Dense(3, use_bias=False)
        >>> x = np.ones((2, 5), "float32")
        >>> out = dense(x)
        >>> view = linear_view(dense, dense.kernel)
        >>> matrix = view.to_matrix(keras.ops.convert_to_numpy(dense.kernel))
        >>> bool(np.allclose(view.features(x) @ matrix, keras.ops.convert_to_numpy(out)))
        True
    """
    if variable is not getattr(layer, "kernel", None) or getattr(layer, "quantization_mode", None):
        return None
    shape = tuple(variable.shape)
    if isinstance(layer, keras.layers.EinsumDense):
        return _einsum_view(layer, variable)
    if isinstance(layer, keras.layers.Dense):
        return LinearView(layer, variable, lambda x: _rows(x, shape[0]), np.asarray, np.asarray, shape[0])
    if _is_plain_conv(layer):
        return _conv_view(layer, variable)
    return None


def weight_views(root: keras.layers.Layer, variables) -> list[LinearView | None]:
    """:func:`linear_view` of each of ``variables``, found among the layers inside ``root``."""
    owners = {id(v): layer for layer in all_layers(root) for v in own_variables(layer)}
    return [linear_view(owners[id(v)], v) if id(v) in owners else None for v in variables]


def _rows(x: np.ndarray, features: int) -> np.ndarray:
    return np.asarray(x).reshape(-1, features)


def _identity_reshape(shape: tuple[int, ...]):
    features = math.prod(shape[:-1])
    return (lambda kernel: np.asarray(kernel).reshape(features, shape[-1]),
            lambda matrix: np.asarray(matrix).reshape(shape))


# -- EinsumDense -------------------------------------------------------------------------------


def _einsum_view(layer, variable) -> LinearView | None:
    inputs, output = layer.equation.replace(" ", "").split("->")
    source, kernel = inputs.split(",")
    if "." in kernel:
        return None
    summed = [c for c in kernel if c in source and c not in output]
    produced = [c for c in kernel if c not in source]
    if not summed or len(summed) + len(produced) != len(kernel):
        return None  # a letter in the input, kernel and output alike: a batched product
    if any(c not in output for c in source.replace(".", "") if c not in kernel):
        return None  # an input axis summed away without the kernel
    order = [kernel.index(c) for c in summed + produced]
    shape = tuple(variable.shape)
    moved = tuple(shape[i] for i in order)
    k = math.prod(moved[: len(summed)])
    inverse = np.argsort(order)

    def features(x):
        x = np.asarray(x)
        letters = _expand_ellipsis(source, x.ndim)
        positions = [letters.index(c) for c in summed]
        rest = [i for i in range(x.ndim) if i not in positions]
        return np.transpose(x, rest + positions).reshape(-1, k)

    return LinearView(
        layer, variable, features,
        lambda w: np.transpose(np.asarray(w), order).reshape(k, -1),
        lambda m: np.transpose(np.asarray(m).reshape(moved), inverse),
        k,
    )


def _expand_ellipsis(letters: str, ndim: int) -> list[str | None]:
    if "..." not in letters:
        return list(letters)
    before, after = letters.split("...")
    return [*before, *([None] * (ndim - len(before) - len(after))), *after]


# -- convolutions ------------------------------------------------------------------------------


def _is_plain_conv(layer) -> bool:
    conv_types = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
    transposed = (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose)
    separable = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
    return (isinstance(layer, conv_types) and not isinstance(layer, transposed + separable)
            and getattr(layer, "groups", 1) == 1)


def _conv_view(layer, variable) -> LinearView:
    shape = tuple(variable.shape)
    window = shape[:-2]
    strides, dilation = _tuple(layer.strides, len(window)), _tuple(layer.dilation_rate, len(window))
    padding, channels_first = layer.padding, layer.data_format == "channels_first"

    def features(x):
        x = np.asarray(x)
        if channels_first:
            x = np.moveaxis(x, 1, -1)
        return unfold(x, window, strides, dilation, padding)

    to_matrix, from_matrix = _identity_reshape(shape)
    return LinearView(layer, variable, features, to_matrix, from_matrix, math.prod(shape[:-1]))


def _tuple(value, rank: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (int(value),) * rank


def unfold(
    x: np.ndarray,
    window: tuple[int, ...],
    strides: tuple[int, ...],
    dilation: tuple[int, ...],
    padding: str,
) -> np.ndarray:
    """The patches a channels-last convolution multiplies by its kernel: ``(positions, window * C)``.

    Padding follows Keras: ``"same"`` puts the odd pixel after, ``"causal"`` (1-D) pads before.

    Example:
        >>> x = np.arange(5.0).reshape(1, 5, 1)
        >>> unfold(x, (3,), (2,), (1,), "valid").tolist()
        [[0.0, 1.0, 2.0], [2.0, 3.0, 4.0]]
    """
    spans = [(k - 1) * d + 1 for k, d in zip(window, dilation)]
    pads = [(0, 0)]
    for size, span, stride in zip(x.shape[1:-1], spans, strides):
        if padding == "same":
            total = max((-(-size // stride) - 1) * stride + span - size, 0)
            pads.append((total // 2, total - total // 2))
        elif padding == "causal":
            pads.append((span - 1, 0))
        else:
            pads.append((0, 0))
    x = np.pad(x, pads + [(0, 0)])
    spatial = tuple(range(1, x.ndim - 1))
    patches = np.lib.stride_tricks.sliding_window_view(x, spans, axis=spatial)
    positions = tuple(slice(None, None, s) for s in strides)
    taps = tuple(slice(None, None, d) for d in dilation)
    patches = patches[(slice(None), *positions, slice(None), *taps)]
    # (batch, *positions, channels, *window) -> (batch, *positions, *window, channels)
    patches = np.moveaxis(patches, len(window) + 1, -1)
    return patches.reshape(-1, math.prod(window) * x.shape[-1])
