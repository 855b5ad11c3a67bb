"""``PruneLowMagnitude``: the pruning state of one layer, as a wrapper (tfmot's design).

:func:`keras_prune.prune_low_magnitude` prunes a whole model with a
:class:`keras_prune.PrunedModel`, which reaches layers at any depth. The wrapper is for
pruning one layer (``prune_low_magnitude(layer)``) and for code written for tfmot
(:mod:`keras_prune.compat.tfmot`, ``isinstance(layer, PruneLowMagnitude)``). Both keep
their masks, thresholds and step the same way (:mod:`keras_prune.core`).
"""

from __future__ import annotations

import keras

from keras_prune import registry
from keras_prune.core import PACKAGE, PruningState
from keras_prune.handlers import input_axes
from keras_prune.schedules import ConstantSparsity, PruningSchedule


@keras.saving.register_keras_serializable(package=PACKAGE)
class PruneLowMagnitude(PruningState, keras.layers.Wrapper):
    """Wraps a layer to prune its weights by magnitude on a schedule.

    Train with the :class:`keras_prune.UpdatePruningStep` callback, then remove the wrapper
    with :func:`keras_prune.strip_pruning`.

    Args:
        layer: the layer to prune (must hold prunable weights, see :mod:`keras_prune.registry`).
        pruning_schedule: when and how much to prune.
        block_size: prune whole ``(rows, cols)`` blocks of each weight's 2-D view.
        block_pooling_type: ``"AVG"`` or ``"MAX"``, how a block's magnitudes are pooled.
        sparsity_m_by_n: ``(m, n)``: prune ``m`` of every ``n`` consecutive weights along the
            input axis (``(2, 4)`` is the 2:4 pattern); the schedule's sparsity is then ignored.
        scope: ``"layer"`` ranks each weight tensor on its own; ``"global"`` ranks all
            globally-scoped weights of the model together.

    Example:
        >>> dense = PruneLowMagnitude(keras.layers.Dense(4), ConstantSparsity(0.5, 0))
        >>> dense.build((None, 8))
        >>> [m.shape for m in dense.masks()]
        [(8, 4)]
    """

    def __init__(
        self,
        layer: keras.layers.Layer,
        pruning_schedule: PruningSchedule | None = None,
        block_size: tuple[int, int] = (1, 1),
        block_pooling_type: str = "AVG",
        sparsity_m_by_n: tuple[int, int] | None = None,
        scope: str = "layer",
        **kwargs,
    ):
        self._check_wrappable(layer)
        kwargs.setdefault("name", f"prune_low_magnitude_{layer.name}")
        super().__init__(layer, **kwargs)
        self.init_pruning(pruning_schedule or ConstantSparsity(0.5, 0), block_size, block_pooling_type,
                          sparsity_m_by_n, scope)
        self.supports_masking = layer.supports_masking
        if layer.built:
            self._create_state()

    def build(self, input_shape=None):
        if not self.layer.built:
            self.layer.build(input_shape)
        self._create_state()

    def _check_wrappable(self, layer) -> None:
        """Raises unless this wrapper can prune ``layer`` (subclasses may accept more)."""
        check_layer(layer)

    def get_build_config(self):
        # Nothing to record while unbuilt: a saved unbuilt wrapper then loads unbuilt.
        return {"layer": self.layer.get_build_config()} if self.layer.built else None

    def build_from_config(self, config):
        if not self.layer.built and config.get("layer"):
            self.layer.build_from_config(config["layer"])
        self._create_state()

    def _create_state(self):
        if self._masks:
            return
        weights = registry.prunable_weights(self.layer)
        if not weights:
            raise ValueError(f"Layer '{self.layer.name}' ({type(self.layer).__name__}) has no prunable weights.")
        self.create_state(weights, input_axes(self.layer, weights))

    def call(self, inputs, *args, training=None, **kwargs):
        return self.pruned_call(inputs, *args, training=training, **kwargs)

    def compute_mask(self, inputs, mask=None):
        return self.layer.compute_mask(inputs, mask)

    def get_config(self):
        return {**super().get_config(), **self.pruning_config()}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return super().from_config(cls.restore_pruning_config(config, custom_objects), custom_objects=custom_objects)


def check_layer(layer: object) -> None:
    """Raises unless ``layer`` is a layer that can be wrapped for pruning."""
    if isinstance(layer, PruningState):
        raise ValueError(
            f"Layer '{layer.name}' is already pruned. Call keras_prune.strip_pruning() "
            "first to prune it again with other settings."
        )
    if isinstance(layer, keras.Model):
        raise TypeError(
            f"Argument `layer` must be a layer, not a model ('{layer.name}'). Pass the model "
            "to keras_prune.prune_low_magnitude() instead."
        )
    if not isinstance(layer, keras.layers.Layer):
        raise TypeError(
            f"Argument `layer` must be a keras.layers.Layer. Received: layer={layer!r}"
        )
    # prunable_weights raises UnsupportedLayerError for custom layers that declare nothing.
    prunable = registry.prunable_weights(layer) if layer.built else registry.has_rule(layer)
    if not prunable:
        raise ValueError(
            f"Layer '{layer.name}' ({type(layer).__name__}) has no prunable weights. "
            "Prune Dense, Conv, Embedding, RNN, attention layers, or a PrunableLayer."
        )
