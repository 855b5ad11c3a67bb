"""What keras-prune knows about each layer type: one :class:`LayerHandler` per layer class.

A handler gathers every per-type fact the rest of keras-prune reads:

- ``prunable``: which weights unstructured pruning may zero (:mod:`keras_prune.registry`,
  hence ``prune_low_magnitude``, ``magnitude_prune``, reports);
- ``channel_axes`` and ``width_key``: which channel each axis of each weight indexes, and the
  config key that holds the output width (structured pruning, :func:`keras_prune.prune_channels`);
- ``flops``: the FLOPs of one call (:mod:`keras_prune.analysis.flops`);
- ``fold_kernels``: whether a following BatchNormalization folds into the layer, and how many
  kernels come before its bias (:func:`keras_prune.fold_batchnorm`).

Handlers are found along the layer's class hierarchy, most specific class first: a subclass of
a supported layer uses its base's handler until it gets its own, and a handler registered for
a custom class wins over those of its built-in bases. A layer that subclasses
:class:`keras_prune.PrunableLayer` declares its prunable weights itself, which wins over the
``prunable`` of any handler. :func:`register_handler` adds (or replaces) the handler of a class.

Example:
    >>> class Scale(keras.layers.Layer):
    ...     def build(self, input_shape):
    ...         self.w = self.add_weight(shape=(input_shape[-1],), name="w")
    ...     def call(self, x):
    ...         return x * self.w
    >>> register_handler(Scale, LayerHandler(prunable=lambda layer: [layer.w],
    ...                                      flops=lambda layer, inputs, outputs: 7))
    >>> layer = Scale(name="scale")
    >>> layer.build((None, 4))
    >>> [w.path for w in handler_for(layer).prunable(layer)]
    ['scale/w']
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras
from keras import layers

from keras_prune import masks, registry
from keras_prune._keras_compat import all_layers, own_variables

# How the channel graph traces a layer whose channels do not simply flow from its input rows
# ("in") to its output units ("out"): the routines of keras_prune.structured.graph.
TRACES = (
    "input", "pass", "activation", "prelu", "norm", "merge", "concat", "flatten", "reshape",
    "attention", "conv", "separable", "depthwise",
)
_GENERIC_SLOTS = ("in", "out")

Axes = tuple[str | None, ...]
ChannelAxes = Mapping[str, Axes] | Callable[[keras.layers.Layer], Mapping[str, Axes]]


@dataclasses.dataclass(frozen=True)
class LayerHandler:
    """What keras-prune knows about one layer type. Every field is optional.

    Attributes:
        prunable: ``layer -> list of variables`` that unstructured pruning may zero
            (typically kernels, not biases). ``None``: the type declares nothing, so a layer
            of it holding weights is left dense (or refused, see :mod:`keras_prune.registry`).
        channel_axes: for structured pruning, a mapping from weight name (the end of the
            variable's path, e.g. ``"kernel"`` or ``"block/w"``) to one entry per axis of that
            weight: ``"in"`` (the axis indexes input channels), ``"out"`` (output channels) or
            ``None`` (never sliced); or a callable ``layer -> mapping``. With ``width_key``
            this describes a Dense-like producer: its last output axis has ``width_key``
            channels, and every ``"in"`` axis follows the channels of its single input.
        width_key: the config key holding the output width (``"units"``, ``"filters"``,
            ``"output_dim"``, ``"num_heads"``); structured pruning shrinks it and rebuilds the
            layer with ``from_config``.
        flops: ``(layer, input_shapes, output_shapes) -> int``: the FLOPs of one call, shapes
            including the batch axis (a multiply-add counts 2). ``None``: one FLOP per output
            element.
        fold_kernels: when > 0, a BatchNormalization following the layer (no activation,
            ``use_bias`` in its config) folds into it: the layer's weights are this many
            kernels, then an optional bias, and the last kernel's trailing axes index the
            output channels. 0: BatchNorm never folds into it.
        trace: the channel-graph routine of a built-in layer with special channel rules
            (one of ``TRACES``); leave ``None`` for a Dense-like layer described by
            ``channel_axes`` and ``width_key``.
    """

    prunable: Callable[[keras.layers.Layer], list] | None = None
    channel_axes: ChannelAxes | None = None
    width_key: str | None = None
    flops: Callable[[keras.layers.Layer, list, list], int] | None = None
    fold_kernels: int = 0
    trace: str | None = None
    input_axis: Callable[[keras.layers.Layer, Any], int | None] | None = None

    def __post_init__(self) -> None:
        for field in ("prunable", "flops", "input_axis"):
            value = getattr(self, field)
            if value is not None and not callable(value):
                raise TypeError(
                    f"LayerHandler argument `{field}` must be a callable or None. "
                    f"Received: {field}={value!r}"
                )
        if self.trace is not None and self.trace not in TRACES:
            raise ValueError(
                f"LayerHandler argument `trace` must be None or one of {TRACES}. "
                f"Received: trace={self.trace!r}"
            )
        if self.width_key is not None and (not isinstance(self.width_key, str) or not self.width_key):
            raise TypeError(
                "LayerHandler argument `width_key` must be a non-empty string (a config key) "
                f"or None. Received: width_key={self.width_key!r}"
            )
        if isinstance(self.fold_kernels, bool) or not isinstance(self.fold_kernels, int) or self.fold_kernels < 0:
            raise ValueError(
                "LayerHandler argument `fold_kernels` must be an integer >= 0. "
                f"Received: fold_kernels={self.fold_kernels!r}"
            )
        axes = self.channel_axes
        if axes is None or callable(axes):
            if self.width_key is not None and axes is None and self.trace is None:
                raise ValueError(
                    "LayerHandler argument `width_key` needs `channel_axes`: which axes of "
                    "which weights index the output channels."
                )
            return
        if not isinstance(axes, Mapping):
            raise TypeError(
                "LayerHandler argument `channel_axes` must be a mapping from weight name to a "
                f"tuple of axis slots, a callable, or None. Received: channel_axes={axes!r}"
            )
        checked = {}
        for name, slots in axes.items():
            if not isinstance(name, str) or not isinstance(slots, (tuple, list)) or not all(
                s is None or isinstance(s, str) for s in slots
            ):
                raise TypeError(
                    "LayerHandler argument `channel_axes` must map weight names (str) to tuples "
                    f"of 'in', 'out' or None, one per axis. Received: {name!r}: {slots!r}"
                )
            checked[name] = tuple(slots)
        object.__setattr__(self, "channel_axes", checked)
        if self.trace is None:
            used = {s for slots in checked.values() for s in slots if s is not None}
            if not used <= set(_GENERIC_SLOTS):
                raise ValueError(
                    "LayerHandler argument `channel_axes` may only use the slots 'in', 'out' "
                    f"and None. Received: {sorted(used - set(_GENERIC_SLOTS))}"
                )
            if "out" not in used or self.width_key is None:
                raise ValueError(
                    "LayerHandler argument `channel_axes` describes a producer: it needs at "
                    "least one 'out' axis and `width_key`, the config key of the output width "
                    f"(e.g. 'units'). Received: channel_axes={checked!r}, "
                    f"width_key={self.width_key!r}"
                )

    def weight_axes(self, layer: keras.layers.Layer) -> dict[str, Axes]:
        """``channel_axes`` for ``layer`` (calling it when it is a callable); ``{}`` if unset."""
        axes = self.channel_axes
        if callable(axes):
            axes = axes(layer)
        return dict(axes or {})


_HANDLERS: dict[type, LayerHandler] = {}


def register_handler(layer_class: type, handler: LayerHandler) -> None:
    """Makes ``handler`` the handler of ``layer_class`` and its subclasses (unless they have one).

    Registering again for the same class replaces its handler. Built-in classes may be
    given a new handler too; it wins over the one keras-prune ships.

    Args:
        layer_class: a subclass of ``keras.layers.Layer``.
        handler: what keras-prune should know about it.

    Raises:
        TypeError: ``layer_class`` is not a Layer class, or ``handler`` not a LayerHandler.

    Example:
        >>> class Gate(keras.layers.Layer):
        ...     pass
        >>> register_handler(Gate, LayerHandler(flops=lambda layer, inputs, outputs: 0))
        >>> handler_for(Gate()).flops(None, [], [])
        0
        >>> register_handler(Gate, "not a handler")
        Traceback (most recent call last):
        ...
        TypeError: Argument `handler` must be a keras_prune.LayerHandler. Received: handler='not a handler'
    """
    if not (isinstance(layer_class, type) and issubclass(layer_class, keras.layers.Layer)):
        raise TypeError(
            "Argument `layer_class` must be a subclass of keras.layers.Layer. "
            f"Received: layer_class={layer_class!r}"
        )
    if not isinstance(handler, LayerHandler):
        raise TypeError(
            f"Argument `handler` must be a keras_prune.LayerHandler. Received: handler={handler!r}"
        )
    _HANDLERS[layer_class] = handler


def _declared(layer) -> list:
    return list(layer.get_prunable_weights())


def handler_for(layer: Any) -> LayerHandler | None:
    """The handler of ``layer`` (an instance or a class): its most specific registered class.

    A :class:`keras_prune.PrunableLayer`'s own ``get_prunable_weights`` replaces the handler's
    ``prunable``. ``None`` when keras-prune knows nothing about the type.

    Example:
        >>> handler_for(keras.layers.Dense(2)).width_key
        'units'
        >>> handler_for(keras.layers.Layer()) is None
        True
    """
    cls = layer if isinstance(layer, type) else type(layer)
    handler = next((_HANDLERS[c] for c in cls.__mro__ if c in _HANDLERS), None)
    if issubclass(cls, registry.PrunableLayer):
        handler = dataclasses.replace(handler or LayerHandler(), prunable=_declared)
    return handler


# -- prunable weights -------------------------------------------------------------------------


def _kernel(layer) -> list:
    return [layer.kernel]


def _separable(layer) -> list:
    return [layer.depthwise_kernel, layer.pointwise_kernel]


def _embedding(layer) -> list:
    return [layer.embeddings]


def _reversible_embedding(layer) -> list:
    # Untied, the output projection (the LM head of Llama, Mistral, Phi-3...) is its own weight.
    return [layer.embeddings] + ([] if layer.tie_weights else [layer.reverse_embeddings])


def _attention(layer) -> list:
    denses = (layer.query_dense, layer.key_dense, layer.value_dense, layer.output_dense)
    return [dense.kernel for dense in denses]


def _cell(cell) -> list:
    if isinstance(cell, layers.StackedRNNCells):
        return [w for inner in cell.cells for w in _cell(inner)]
    handler = handler_for(cell)
    if (handler is not None and handler.prunable is not None) or not registry.is_builtin(cell):
        return registry.prunable_weights(cell)
    return [cell.kernel, cell.recurrent_kernel]


def _rnn(layer) -> list:
    return _cell(layer.cell)


def _bidirectional(layer) -> list:
    return _rnn(layer.forward_layer) + _rnn(layer.backward_layer)


def _time_distributed(layer) -> list:
    return registry.prunable_weights(layer.layer)


# -- channel axes -----------------------------------------------------------------------------


def _spatial_axes(layer) -> Axes:
    return (None,) * len(layer.kernel_size)


def _conv_axes(layer) -> dict[str, Axes]:
    return {"kernel": _spatial_axes(layer) + ("in", "out"), "bias": ("out",)}


def _conv_transpose_axes(layer) -> dict[str, Axes]:
    return {"kernel": _spatial_axes(layer) + ("out", "in"), "bias": ("out",)}


def _separable_axes(layer) -> dict[str, Axes]:
    nd = _spatial_axes(layer)
    return {"depthwise_kernel": nd + ("in", None), "pointwise_kernel": nd + ("mid", "out"),
            "bias": ("out",)}


def _depthwise_axes(layer) -> dict[str, Axes]:
    return {"kernel": _spatial_axes(layer) + ("in", None), "bias": ("out",)}


def _prelu_axes(layer) -> dict[str, Axes]:
    return {"alpha": (None,) * (len(layer.alpha.shape) - 1) + ("c",)}


_NORM_AXES = {name: ("c",) for name in ("gamma", "beta", "moving_mean", "moving_variance")}
_ATTENTION_AXES = {
    **{f"{n}/kernel": (None, "heads", None) for n in ("query", "key", "value")},
    **{f"{n}/bias": ("heads", None) for n in ("query", "key", "value")},
    "attention_output/kernel": ("heads", None, None),
}


# -- FLOPs (one example; a multiply-add counts 2; bias additions are not counted) ---------------


def shape_size(shape: Sequence[int | None]) -> int:
    """The number of elements of one example of ``shape`` (the batch axis is left out)."""
    return math.prod(d for d in shape[1:] if d is not None)


def _first_output(outputs):
    return outputs[0] if outputs else (None,)


def _free(layer, inputs, outputs) -> int:
    return 0


def _dense_flops(layer, inputs, outputs) -> int:
    return 2 * shape_size(_first_output(outputs)) * int(inputs[0][-1])


def _separable_flops(layer, inputs, outputs) -> int:
    out = _first_output(outputs)
    k = math.prod(layer.kernel_size)
    cin, mult = int(inputs[0][-1]), layer.depth_multiplier
    spatial = shape_size(out) // int(out[-1])
    return 2 * spatial * cin * mult * (k + int(out[-1]))


def _depthwise_flops(layer, inputs, outputs) -> int:
    return 2 * shape_size(_first_output(outputs)) * math.prod(layer.kernel_size)


def _conv_transpose_flops(layer, inputs, outputs) -> int:
    k = math.prod(layer.kernel_size)
    return 2 * shape_size(inputs[0]) * k * int(_first_output(outputs)[-1])


def _conv_flops(layer, inputs, outputs) -> int:
    k = math.prod(layer.kernel_size)
    return 2 * shape_size(_first_output(outputs)) * k * int(inputs[0][-1]) // layer.groups


def _pool_flops(layer, inputs, outputs) -> int:
    return shape_size(_first_output(outputs)) * math.prod(layer.pool_size)


def _global_pool_flops(layer, inputs, outputs) -> int:
    return shape_size(inputs[0])


def _attention_flops(layer, inputs, outputs) -> int:
    out = _first_output(outputs)
    query = inputs[0]
    value = inputs[1] if len(inputs) > 1 else query
    key = inputs[2] if len(inputs) > 2 else value
    tq, tv = shape_size(query) // int(query[-1]), shape_size(value) // int(value[-1])
    heads, kd = layer.num_heads, layer.key_dim
    vd = layer.value_dim or kd
    projections = tq * int(query[-1]) * heads * kd + tv * int(key[-1]) * heads * kd
    projections += tv * int(value[-1]) * heads * vd + tq * heads * vd * int(out[-1])
    attention = tq * tv * heads * (kd + vd)
    return 2 * (projections + attention)


# -- the built-in handlers --------------------------------------------------------------------


def _register_all(classes, handler: LayerHandler) -> None:
    for cls in classes:
        register_handler(cls, handler)


def _nd(name: str, dims=(1, 2, 3)) -> list[type]:
    return [getattr(layers, name.format(d)) for d in dims]


_EMBEDDING = LayerHandler(prunable=_embedding, channel_axes={"embeddings": (None, "out")},
                          width_key="output_dim", flops=_free)


def _einsum_input_axis(layer, variable) -> int | None:
    """The last kernel axis the equation sums over (``"abc,cde->abde"``: ``c`` and ``d``... of the
    kernel ``cde``, those also in the input and not in the output); ``None`` for other weights."""
    if variable is not getattr(layer, "kernel", None):
        return None
    inputs, output = layer.equation.split("->")
    source, kernel = (part.strip() for part in inputs.split(","))
    summed = [i for i, letter in enumerate(kernel) if letter in source and letter not in output]
    return summed[-1] if summed else None


def input_axis(layer: keras.layers.Layer, variable) -> int:
    """The axis of ``variable`` (a weight of ``layer``) that ``layer`` sums its inputs over.

    N:M patterns group weights along it, so the zeros fall where sparse matrix hardware
    needs them. The handler's ``input_axis`` decides (an EinsumDense query kernel
    ``(hidden, heads, head_size)`` sums over ``hidden``, axis 0); by default the
    second-to-last axis, as in Dense ``(in, out)`` and Conv ``(..., in, out)`` kernels.
    """
    handler = handler_for(layer)
    axis = handler.input_axis(layer, variable) if handler is not None and handler.input_axis else None
    return masks.default_input_axis(len(variable.shape)) if axis is None else axis


def input_axes(root: keras.layers.Layer, variables: Sequence) -> list[int]:
    """:func:`input_axis` of each of ``variables``, found among the layers inside ``root``."""
    owners = {}
    for layer in all_layers(root):
        for variable in own_variables(layer):
            owners.setdefault(id(variable), layer)
    return [
        input_axis(owners[id(v)], v) if id(v) in owners else masks.default_input_axis(len(v.shape))
        for v in variables
    ]

_register_all([layers.Permute, layers.RepeatVector], LayerHandler(flops=_free))
register_handler(layers.InputLayer, LayerHandler(trace="input", flops=_free))
register_handler(layers.Flatten, LayerHandler(trace="flatten", flops=_free))
register_handler(layers.Reshape, LayerHandler(trace="reshape", flops=_free))
# Channel-wise layers: each output channel depends on the same input channel only.
_register_all(
    [layers.Dropout, layers.Identity, *_nd("SpatialDropout{}D"), *_nd("ZeroPadding{}D"),
     *_nd("Cropping{}D")],
    LayerHandler(trace="pass", flops=_free),
)
_register_all(
    [layers.ReLU, layers.LeakyReLU, layers.ELU, layers.GaussianNoise, layers.GaussianDropout,
     layers.AlphaDropout, layers.ActivityRegularization, layers.Rescaling, *_nd("UpSampling{}D"),
     layers.GlobalAveragePooling3D, layers.GlobalMaxPooling3D],
    LayerHandler(trace="pass"),
)
_register_all([*_nd("MaxPooling{}D"), *_nd("AveragePooling{}D")],
              LayerHandler(trace="pass", flops=_pool_flops))
_register_all(
    [*_nd("GlobalAveragePooling{}D", (1, 2)), *_nd("GlobalMaxPooling{}D", (1, 2))],
    LayerHandler(trace="pass", flops=_global_pool_flops),
)
register_handler(layers.Activation, LayerHandler(trace="activation"))
register_handler(layers.PReLU, LayerHandler(trace="prelu", channel_axes=_prelu_axes))
_register_all([layers.BatchNormalization, layers.LayerNormalization],
              LayerHandler(trace="norm", channel_axes=_NORM_AXES))
_register_all(
    [layers.Add, layers.Subtract, layers.Multiply, layers.Average, layers.Maximum, layers.Minimum],
    LayerHandler(trace="merge"),
)
register_handler(layers.Concatenate, LayerHandler(trace="concat"))
register_handler(layers.Dense, LayerHandler(
    prunable=_kernel, channel_axes={"kernel": ("in", "out"), "bias": ("out",)}, width_key="units",
    flops=_dense_flops, fold_kernels=1,
))
register_handler(layers.EinsumDense, LayerHandler(prunable=_kernel, input_axis=_einsum_input_axis))
_register_all(_nd("Conv{}D"), LayerHandler(
    prunable=_kernel, trace="conv", channel_axes=_conv_axes, width_key="filters",
    flops=_conv_flops, fold_kernels=1,
))
_register_all(_nd("Conv{}DTranspose"), LayerHandler(
    prunable=_kernel, channel_axes=_conv_transpose_axes, width_key="filters",
    flops=_conv_transpose_flops,
))
_register_all(_nd("DepthwiseConv{}D", (1, 2)), LayerHandler(
    prunable=_kernel, trace="depthwise", channel_axes=_depthwise_axes, flops=_depthwise_flops,
    fold_kernels=1,
))
_register_all(_nd("SeparableConv{}D", (1, 2)), LayerHandler(
    prunable=_separable, trace="separable", channel_axes=_separable_axes, width_key="filters",
    flops=_separable_flops, fold_kernels=2,
))
register_handler(layers.Embedding, _EMBEDDING)
register_handler(layers.ReversibleEmbedding,
                 dataclasses.replace(_EMBEDDING, prunable=_reversible_embedding))
register_handler(layers.MultiHeadAttention, LayerHandler(
    prunable=_attention, trace="attention", channel_axes=_ATTENTION_AXES, width_key="num_heads",
    flops=_attention_flops,
))
register_handler(layers.Bidirectional, LayerHandler(prunable=_bidirectional))
register_handler(layers.TimeDistributed, LayerHandler(prunable=_time_distributed))
register_handler(layers.RNN, LayerHandler(prunable=_rnn))
