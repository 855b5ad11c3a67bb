"""Which weights of a layer are prunable.

Dispatch is by ``isinstance`` (so subclasses of supported layers are supported), most
specific rule first. A custom layer declares its own prunable weights by subclassing
:class:`PrunableLayer`. Built-in Keras layers without a rule (BatchNormalization, pooling,
...) have nothing to prune. keras-prune never guesses which weights of a custom layer are
safe to zero: :func:`prunable_weights` raises for a custom layer that holds weights but
declares nothing, and one-shot pruning (see :mod:`keras_prune.traversal`) leaves such
weights dense and names them in its report.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
from keras import layers


class PrunableLayer:
    """Mixin for custom layers: declare which weights keras-prune may prune.

    Example:
        >>> class MyDense(keras.layers.Dense, PrunableLayer):
        ...     def get_prunable_weights(self):
        ...         return [self.kernel]
    """

    def get_prunable_weights(self) -> list:
        """Returns the variables to prune (typically kernels, not biases)."""
        raise NotImplementedError(
            f"{type(self).__name__} subclasses keras_prune.PrunableLayer but does not "
            "implement `get_prunable_weights()`. Return the list of variables to prune."
        )


class UnsupportedLayerError(ValueError):
    """A layer holds weights but keras-prune does not know which of them to prune."""


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
    if isinstance(cell, PrunableLayer) or not is_builtin(cell):
        return prunable_weights(cell)
    return [cell.kernel, cell.recurrent_kernel]


def _rnn(layer) -> list:
    return _cell(layer.cell)


def _bidirectional(layer) -> list:
    return _rnn(layer.forward_layer) + _rnn(layer.backward_layer)


def _time_distributed(layer) -> list:
    return prunable_weights(layer.layer)


_KERNEL_LAYERS = (
    layers.Dense,
    layers.EinsumDense,
    layers.Conv1D,
    layers.Conv2D,
    layers.Conv3D,
    layers.Conv1DTranspose,
    layers.Conv2DTranspose,
    layers.Conv3DTranspose,
    layers.DepthwiseConv1D,
    layers.DepthwiseConv2D,
)

# Most specific first: the first matching rule wins.
_RULES: list[tuple[type | tuple[type, ...], Callable[[keras.layers.Layer], list]]] = [
    (PrunableLayer, lambda layer: list(layer.get_prunable_weights())),
    ((layers.SeparableConv1D, layers.SeparableConv2D), _separable),
    (_KERNEL_LAYERS, _kernel),
    (layers.ReversibleEmbedding, _reversible_embedding),
    (layers.Embedding, _embedding),
    (layers.MultiHeadAttention, _attention),
    (layers.Bidirectional, _bidirectional),
    (layers.TimeDistributed, _time_distributed),
    (layers.RNN, _rnn),
]

_BASE_CLASSES = set(keras.layers.Layer.__mro__) | set(keras.Model.__mro__)


def is_builtin(layer: keras.layers.Layer) -> bool:
    """Whether ``layer`` is (or derives from) a layer class that Keras itself ships."""
    return any(
        cls.__module__.startswith("keras.") and cls not in _BASE_CLASSES
        for cls in type(layer).__mro__
    )


def has_rule(layer: keras.layers.Layer) -> bool:
    """Whether keras-prune knows the prunable weights of ``layer``'s type."""
    return any(isinstance(layer, types) for types, _ in _RULES)


def prunable_weights(layer: keras.layers.Layer) -> list:
    """The variables of ``layer`` that pruning may zero; ``[]`` if it has none.

    Raises:
        UnsupportedLayerError: ``layer`` is a custom layer with weights and no declaration.

    Example:
        >>> dense = keras.layers.Dense(3, name="fc")
        >>> dense.build((None, 4))
        >>> [w.path for w in prunable_weights(dense)]
        ['fc/kernel']
    """
    for types, rule in _RULES:
        if isinstance(layer, types):
            return rule(layer)
    if not layer.weights or is_builtin(layer):
        return []
    raise UnsupportedLayerError(
        f"Layer '{layer.name}' of type {type(layer).__name__} holds weights but keras-prune "
        "does not know which of them to prune. Subclass `keras_prune.PrunableLayer` and "
        "return the variables to prune from `get_prunable_weights()`, or leave the layer "
        "out of pruning (prune the other layers one by one with `prune_low_magnitude(layer)`)."
    )
