"""tfmot's ``PruneLowMagnitude`` wrapper, on the keras-prune core.

It differs from :class:`keras_prune.PruneLowMagnitude` where tfmot's public behaviour does:

* it wraps any layer tfmot wraps, including layers with nothing to prune (Dropout, pooling,
  Add...), which it only passes through; depthwise kernels are not pruned (tfmot leaves
  DepthwiseConv and the depthwise half of SeparableConv dense);
* a layer called with keyword arguments only (``mha(query=x, value=x)``) can be wrapped;
* each weight keeps ``max(round(n * (1 - s)), 1)`` of its ``n`` values, so one survives any
  sparsity;
* training without ``UpdatePruningStep`` raises TensorFlow's ``InvalidArgumentError``;
* ``get_weights()`` and ``set_weights()`` are the wrapped layer's.
"""

from __future__ import annotations

import keras
import numpy as np

from keras_prune import masks, registry
from keras_prune._keras_compat import build_by_calling, copy_input_shape_argument
from keras_prune.compat.schedules import PACKAGE, ConstantSparsity, core_schedule
from keras_prune.core import PruningState
from keras_prune.handlers import input_axes
from keras_prune.wrapper import PruneLowMagnitude as CorePruneLowMagnitude

_DEPTHWISE = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
_SEPARABLE = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)


def tfmot_prunable_weights(layer: keras.layers.Layer) -> list:
    """The weights tfmot prunes in ``layer`` (built): keras-prune's, minus depthwise kernels.

    A layer with a ``get_prunable_weights()`` method declares its own, as in tfmot.

    Example:
        >>> conv = keras.layers.SeparableConv2D(4, 3, name="sep")
        >>> conv.build((None, 8, 8, 2))
        >>> [w.path for w in tfmot_prunable_weights(conv)]
        ['sep/pointwise_kernel']
    """
    declare = getattr(layer, "get_prunable_weights", None)
    if callable(declare):
        return list(declare())
    if isinstance(layer, _DEPTHWISE):
        return []
    if isinstance(layer, _SEPARABLE):
        return [layer.pointwise_kernel]
    return registry.prunable_weights(layer)  # raises for a custom layer that declares nothing


def tfmot_keep_count(sparsity: float, size: int) -> int:
    """How many of ``size`` weights tfmot keeps at ``sparsity``: ``max(round(size * (1 - s)), 1)``.

    Computed in float32 and rounded half to even, as tfmot does.

    Example:
        >>> tfmot_keep_count(0.99, 40), tfmot_keep_count(0.5, 5)
        (1, 2)
    """
    kept = np.round(np.float32(size) * (np.float32(1.0) - np.float32(sparsity)))
    return int(max(kept, 1))


def check_wrappable(layer: object) -> None:
    """Raises ValueError, as tfmot does, unless tfmot would wrap ``layer``."""
    if not isinstance(layer, keras.layers.Layer) or isinstance(layer, (keras.Model, PruningState)):
        raise ValueError(
            "Argument `layer` must be a Keras layer that is neither a model nor already pruned. "
            f"Received: layer={layer!r}"
        )
    if layer.built:
        tfmot_prunable_weights(layer)  # a custom layer that declares nothing raises here
    elif not (registry.is_builtin(layer) or registry.has_rule(layer) or hasattr(layer, "get_prunable_weights")):
        raise ValueError(
            f"Layer '{layer.name}' ({type(layer).__name__}) is a custom layer keras-prune does not know. "
            "Subclass tfmot.sparsity.keras.PrunableLayer and return its weights to prune from "
            "`get_prunable_weights()`."
        )


def missing_callback_error(name: str) -> Exception:
    """tfmot's error for training without ``UpdatePruningStep``: InvalidArgumentError on TensorFlow."""
    message = (f"'{name}' is being trained without the UpdatePruningStep callback: add "
               "tfmot.sparsity.keras.UpdatePruningStep() to fit(callbacks=[...]).")
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.errors.InvalidArgumentError(None, None, message)
    return ValueError(message)


@keras.saving.register_keras_serializable(package=PACKAGE)
class PruneLowMagnitude(CorePruneLowMagnitude):
    """tfmot's pruning wrapper (see the module docstring for how it differs from keras-prune's).

    Example:
        >>> wrapped = PruneLowMagnitude(keras.layers.Dropout(0.5))
        >>> wrapped.build((None, 4))
        >>> wrapped.prunable_weights()
        []
    """

    def __init__(self, layer: keras.layers.Layer, pruning_schedule=None, block_size=(1, 1),
                 block_pooling_type: str = "AVG", sparsity_m_by_n=None, **kwargs):
        schedule = core_schedule(pruning_schedule or ConstantSparsity(0.5, 0))
        super().__init__(layer, schedule, block_size, block_pooling_type, sparsity_m_by_n, **kwargs)
        # Keras(input_shape=...) on the wrapped layer still gives a Sequential its input.
        copy_input_shape_argument(self, layer)

    def _check_wrappable(self, layer) -> None:
        check_wrappable(layer)

    def __call__(self, *args, **kwargs):
        if not self.layer.built:
            # The layer builds itself from its own call, which may take keyword arguments only.
            build_by_calling(self.layer, *args, **kwargs)
        return super().__call__(*args, **kwargs)

    def build(self, input_shape=None):
        if not self.layer.built and input_shape is not None:
            self.layer.build(input_shape)
        self._create_state()

    def _create_state(self):
        if getattr(self, "_state_created", False):
            return
        weights = tfmot_prunable_weights(self.layer)
        self.create_state(weights, input_axes(self.layer, weights))
        self._state_created = True

    def call(self, *args, training=None, **kwargs):
        if training and not self.driven:
            raise missing_callback_error(self.name)
        return self.pruned_call(*args, training=training, **kwargs)

    def get_weights(self) -> list[np.ndarray]:
        """The wrapped layer's weights, as in tfmot (the masks are not included)."""
        return self.layer.get_weights()

    def set_weights(self, weights) -> None:
        """Sets the wrapped layer's weights, as in tfmot."""
        self.layer.set_weights(weights)

    def compute_masks(self, sparsity: float, scores: list[np.ndarray]) -> list[np.ndarray]:
        if tuple(self.block_size) != (1, 1) or self.sparsity_m_by_n is not None:
            return super().compute_masks(sparsity, scores)
        return [masks.lowest_k_mask(s, s.size - tfmot_keep_count(sparsity, s.size)) for s in scores]
