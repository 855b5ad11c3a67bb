"""``PrunedModel``: a model being pruned, with the masks of its weights at any depth.

The model is not rebuilt or cloned, and no layer of it is replaced: the pruned model holds it
as it is, plus a mask and a threshold variable for each weight it prunes, found by one
traversal of the model (:mod:`keras_prune.traversal`) wherever the weight sits: in a nested
model, a custom layer, a KerasHub transformer block. Pruning state is keyed by each layer's
path in the model, which is saved with the pruned model, so a ``.keras`` file saved
mid-pruning loads back (no ``custom_objects`` needed) with the same masks on the same
weights. :func:`keras_prune.strip_pruning` hands the model back, its class and config as
they were.

A saved pruned model records which weights it prunes by their place in that traversal, not
by name: KerasHub blocks name some sub-layers from global counters, so names can differ when
a model is loaded again, while the order of its layers and weights does not.
"""

from __future__ import annotations

import keras

from keras_prune._keras_compat import untracked
from keras_prune.core import PACKAGE, PruningState, final_sparsity
from keras_prune.handlers import input_axes
from keras_prune.oneshot import LayerFilter, _check_sparsity_map, select_weights, weight_key
from keras_prune.schedules import ConstantSparsity, PruningSchedule
from keras_prune.traversal import unique_path, weight_sites


@keras.saving.register_keras_serializable(package=PACKAGE)
class PrunedModel(PruningState, keras.Model):
    """A model pruned by magnitude on a schedule while it trains; usually made by
    :func:`keras_prune.prune_low_magnitude`.

    It calls the model it holds (:attr:`layer`) and trains that model's own variables;
    the masks keep pruned weights at exactly 0.0 after every optimizer step. Train it with
    :class:`keras_prune.UpdatePruningStep`, then get the model back with
    :func:`keras_prune.strip_pruning`.

    Args:
        model: the model to prune (changed in place: its weights are the ones trained).
        pruning_schedule: when and how much to prune; default ``ConstantSparsity(0.5, 0)``.
        block_size, block_pooling_type, sparsity_m_by_n, scope: the pattern, as for
            :class:`keras_prune.PruneLowMagnitude`.
        layers: which layers to prune, at any depth: a regular expression searched in each
            layer's path, a list of paths or names, a callable ``layer -> bool``, or ``None``
            for every layer with prunable weights.
        pruned_weights: which weights to prune, as positions in the list of all the model's
            prunable weights in traversal order (what a saved pruned model records).
        sparsities: per-weight final sparsities, ``{weight key: fraction}`` (a
            :func:`keras_prune.allocate` result): only these weights are pruned, each reaching
            its own when the schedule reaches its final sparsity, in step with it before.
        weight_sparsities: the same, per pruned weight in order (what a saved model records).
        **kwargs: passed to ``keras.Model`` (``name``).

    Example:
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="fc")])
        >>> pruned = PrunedModel(model, ConstantSparsity(0.5, 0))
        >>> pruned.pruned_layers, [m.shape for m in pruned.masks()]
        (['fc'], [(8, 4)])
    """

    def __init__(
        self,
        model: keras.Model,
        pruning_schedule: PruningSchedule | None = None,
        block_size: tuple[int, int] = (1, 1),
        block_pooling_type: str = "AVG",
        sparsity_m_by_n: tuple[int, int] | None = None,
        scope: str = "layer",
        layers: LayerFilter = None,
        pruned_weights: list[int] | None = None,
        sparsities: dict[str, float] | None = None,
        weight_sparsities: list[float] | None = None,
        **kwargs,
    ):
        kwargs.setdefault("name", model.name)
        super().__init__(**kwargs)
        self.layer = model
        self.init_pruning(pruning_schedule or ConstantSparsity(0.5, 0), block_size, block_pooling_type,
                          sparsity_m_by_n, scope)
        self._layer_filter = layers
        self._indices = list(pruned_weights) if pruned_weights is not None else None
        self._sparsities = self._check_sparsities(sparsities)
        self.weight_targets = list(weight_sparsities) if weight_sparsities is not None else None
        self._weight_paths: list[str] = []
        self.pruned_layers: list[str] = []
        if model.built:
            self._create_state()

    def build(self, input_shape=None):
        if not self.layer.built:
            self.layer.build(input_shape)
        self._create_state()

    def _create_state(self) -> None:
        if self._masks:
            return
        everything = select_weights(self.layer)
        if self._indices is None:
            selected = select_weights(self.layer, self._layer_filter, self._sparsities)
            position = {id(weight): i for i, (_, weight) in enumerate(everything)}
            self._indices = [position[id(weight)] for _, weight in selected]
            if self._sparsities is not None:
                self.weight_targets = [self._sparsities[weight_key(path, weight)] for path, weight in selected]
        elif max(self._indices, default=-1) >= len(everything):
            raise ValueError(
                f"Model '{self.layer.name}' has {len(everything)} prunable weights, but the pruned "
                f"model was saved pruning weight #{max(self._indices)}: the model's architecture changed."
            )
        else:
            selected = [everything[i] for i in self._indices]
        with untracked():
            self._weight_paths = [path for path, _ in selected]
        self.pruned_layers = list(dict.fromkeys(self._weight_paths))
        weights = [weight for _, weight in selected]
        self.create_state(weights, input_axes(self.layer, weights))

    def _check_sparsities(self, sparsities) -> dict[str, float] | None:
        if sparsities is None:
            return None
        sparsities = _check_sparsity_map(sparsities, self.scope)
        if self.sparsity_m_by_n is not None:
            raise ValueError("An N:M pattern fixes every weight's sparsity at M/N; pass `sparsities` or "
                             f"`sparsity_m_by_n`, not both. Received: sparsity_m_by_n={self.sparsity_m_by_n!r}")
        if final_sparsity(self.pruning_schedule) <= 0.0:
            raise ValueError("Per-weight `sparsities` are reached when the schedule reaches its final sparsity, "
                             f"so it must end above 0. Received: pruning_schedule={self.pruning_schedule!r}")
        return sparsities

    def pruned_weights(self) -> list[tuple[str, keras.Variable]]:
        """``(layer path, variable)`` for each pruned weight, in the order of :meth:`masks`."""
        return list(zip(self._weight_paths, self._pruned))

    def weight_names(self) -> list[str]:
        """``<layer path>/<weight>`` per pruned weight, unique in the model (``weight.path`` is not)."""
        used: set[str] = set()
        return [unique_path(weight_key(path, weight), used) for path, weight in self.pruned_weights()]

    @property
    def left_dense(self) -> list[tuple[str, str]]:
        """``(layer path, reason)`` for each layer whose weights stay dense although they may be
        prunable (keras-prune does not know which of them to zero, e.g. KerasHub's
        ``PositionEmbedding``)."""
        return [(site.path, site.reason) for site in weight_sites(self.layer) if site.reason]

    def get_layer(self, name: str | None = None, index: int | None = None) -> keras.layers.Layer:
        """A layer of the model being pruned (``pruned.get_layer("dense")`` as on the model)."""
        return self.layer.get_layer(name, index)

    def call(self, inputs, training=None):
        return self.pruned_call(inputs, training=training)

    def get_config(self) -> dict:
        unbuilt = self._indices is None
        if unbuilt and self._layer_filter is not None and not isinstance(self._layer_filter, (str, list, tuple)):
            raise ValueError(
                f"Model '{self.name}' must be built before it is saved: its layers were chosen by "
                "a callable, which cannot be saved. Call it on a batch of data first."
            )
        return {
            "name": self.name,
            "trainable": self.trainable,
            "model": keras.saving.serialize_keras_object(self.layer),
            **self.pruning_config(),
            "layers": self._layer_filter if unbuilt else None,
            "pruned_weights": self._indices,
            "sparsities": self._sparsities if unbuilt else None,
            "weight_sparsities": self.weight_targets,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = cls.restore_pruning_config(config, custom_objects)
        model = keras.saving.deserialize_keras_object(config.pop("model"), custom_objects=custom_objects)
        return cls(model, **config)
