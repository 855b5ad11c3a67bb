"""Which weights of a layer are prunable.

The answer comes from the layer's handler (:mod:`keras_prune.handlers`), found along its
class hierarchy, most specific class first (so subclasses of supported layers are supported).
A custom layer declares its own prunable weights by subclassing :class:`PrunableLayer`, or
its class gets a handler from :func:`keras_prune.register_handler`. Built-in Keras layers
without a rule (BatchNormalization, pooling, ...) have nothing to prune. keras-prune never
guesses which weights of a custom layer are safe to zero: :func:`prunable_weights` raises for
a custom layer that holds weights but declares nothing, and one-shot pruning (see
:mod:`keras_prune.traversal`) leaves such weights dense and names them in its report.
"""

from __future__ import annotations

import keras

from keras_prune import handlers


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


_BASE_CLASSES = set(keras.layers.Layer.__mro__) | set(keras.Model.__mro__)


def is_builtin(layer: keras.layers.Layer) -> bool:
    """Whether ``layer`` is (or derives from) a layer class that Keras itself ships."""
    return any(
        cls.__module__.startswith("keras.") and cls not in _BASE_CLASSES
        for cls in type(layer).__mro__
    )


def has_rule(layer: keras.layers.Layer) -> bool:
    """Whether keras-prune knows the prunable weights of ``layer``'s type."""
    handler = handlers.handler_for(layer)
    return handler is not None and handler.prunable is not None


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
    handler = handlers.handler_for(layer)
    if handler is not None and handler.prunable is not None:
        return list(handler.prunable(layer))
    if not layer.weights or is_builtin(layer):
        return []
    raise UnsupportedLayerError(
        f"Layer '{layer.name}' of type {type(layer).__name__} holds weights but keras-prune "
        "does not know which of them to prune. Subclass `keras_prune.PrunableLayer` and "
        "return the variables to prune from `get_prunable_weights()`, or leave the layer "
        "out of pruning (prune the other layers one by one with `prune_low_magnitude(layer)`)."
    )
