"""The pruning state kept with a layer: masks, thresholds and the step, in one wrapper.

``PruneLowMagnitude`` holds a 0/1 mask next to each prunable weight of the layer it wraps.
Its forward pass is the wrapped layer's, unchanged: pruned weights are kept at exactly 0.0 in
the variables themselves, so no masking is needed on the hot path.

How the zeros are kept:

* On the TensorFlow and PyTorch backends, each prunable variable gets a constraint that
  multiplies it by its mask. Keras optimizers apply variable constraints right after every
  update, so pruned positions are 0.0 after each step, for every optimizer (momentum, Adam,
  AdamW's decoupled weight decay, ...), inside the compiled train step and at no extra pass.
  The product is the cheapest masking op, but leaves -0.0 where the optimizer pushed a pruned
  weight negative; mask updates and the end of each epoch write +0.0 (see ``keep_masked``),
  which is what saved and stripped models hold.
* On JAX, the compiled train step cannot read a mask that changes between steps from a
  constraint, so ``UpdatePruningStep`` re-applies the masks after every batch instead, and the
  wrapped layer runs on its weights times their masks within a step.

Masks change only on the schedule's update steps. The step is counted inside the train step.
With one step per batch, ``UpdatePruningStep`` recomputes the masks from the host before the
step; with several steps per execution they are recomputed inside the compiled step (see
:mod:`keras_prune._backend`), so ``steps_per_execution`` prunes exactly as a plain ``fit``.
"""

from __future__ import annotations

import keras
import numpy as np

from keras_prune import _backend, _host, criteria, masks, registry
from keras_prune._keras_compat import no_autocast
from keras_prune._validation import check_choice
from keras_prune.schedules import ConstantSparsity, PruningSchedule

_PACKAGE = "keras_prune"
SCOPES = ("layer", "global")
UNSTARTED = -1  # pruning_step before UpdatePruningStep has run


def keep_masked(weight, mask):
    """``weight`` where ``mask`` is 1, else +0.0 (a product would leave -0.0, which compresses worse)."""
    weight = keras.ops.convert_to_tensor(weight)
    return keras.ops.where(keras.ops.greater(mask, 0.5), weight, keras.ops.cast(0, weight.dtype))


class MaskConstraint(keras.constraints.Constraint):
    """Zeroes a variable's pruned positions after each optimizer update (after its own constraint).

    A product, not ``keep_masked``: it runs in every train step, where a select costs twice as much.

    Runtime state only: the wrapper re-attaches it on build, so it is never serialized.
    """

    def __init__(self, mask, inner=None):
        self.mask = mask
        self.inner = inner

    def __call__(self, w):
        if self.inner is not None:
            w = self.inner(w)
        return keras.ops.multiply(w, keras.ops.cast(self.mask, w.dtype))


def constraints_hold_masks() -> bool:
    """Whether variable constraints can read live masks inside the compiled train step."""
    return keras.backend.backend() != "jax"


def check_schedule(schedule: object) -> PruningSchedule:
    if not isinstance(schedule, PruningSchedule):
        raise TypeError(
            "Argument `pruning_schedule` must be a keras_prune PruningSchedule, such as "
            f"ConstantSparsity(0.5, begin_step=0). Received: pruning_schedule={schedule!r}"
        )
    return schedule


def check_scope(scope: object, block_size, sparsity_m_by_n) -> str:
    check_choice("scope", scope, SCOPES)
    if scope == "global" and (tuple(block_size) != (1, 1) or sparsity_m_by_n is not None):
        raise ValueError(
            "Argument `scope='global'` ranks single weights across the model and cannot be "
            "combined with `block_size` or `sparsity_m_by_n`. "
            f"Received: block_size={block_size!r}, sparsity_m_by_n={sparsity_m_by_n!r}"
        )
    return scope


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PruneLowMagnitude(keras.layers.Wrapper):
    """Wraps a layer to prune its weights by magnitude on a schedule.

    Usually created by :func:`keras_prune.prune_low_magnitude`. Train with the
    :class:`keras_prune.UpdatePruningStep` callback, then remove the wrapper with
    :func:`keras_prune.strip_pruning`.

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
        check_layer(layer)
        schedule = check_schedule(pruning_schedule or ConstantSparsity(0.5, 0))
        block, pooling, m_by_n = masks.check_pattern(block_size, block_pooling_type, sparsity_m_by_n)
        check_scope(scope, block, m_by_n)
        kwargs.setdefault("name", f"prune_low_magnitude_{layer.name}")
        super().__init__(layer, **kwargs)
        self.pruning_schedule = schedule
        self.block_size = block
        self.block_pooling_type = pooling
        self.sparsity_m_by_n = m_by_n
        self.scope = scope
        self.supports_masking = layer.supports_masking
        self.driven = False  # set by UpdatePruningStep; training without it is an error
        self.updates_in_step = False  # set by UpdatePruningStep for several steps per execution
        self.mask_group = MaskGroup([self])  # UpdatePruningStep groups globally-scoped wrappers
        self._masks: list = []
        self._thresholds: list = []
        if layer.built:
            self._create_state()

    # -- building ---------------------------------------------------------------------------

    def build(self, input_shape=None):
        if not self.layer.built:
            self.layer.build(input_shape)
        self._create_state()

    def get_build_config(self):
        return {"layer": self.layer.get_build_config()}

    def build_from_config(self, config):
        if not self.layer.built and config.get("layer"):
            self.layer.build_from_config(config["layer"])
        self._create_state()

    def _create_state(self):
        if self._masks:
            return
        weights = registry.prunable_weights(self.layer)
        if not weights:
            raise ValueError(
                f"Layer '{self.layer.name}' ({type(self.layer).__name__}) has no prunable weights."
            )
        self.pruning_step = self.add_weight(
            name="pruning_step",
            shape=(),
            dtype="int32",  # int64 is not native on JAX; 2**31 steps is plenty
            initializer=keras.initializers.Constant(UNSTARTED),
            trainable=False,
        )
        for i, weight in enumerate(weights):
            self._masks.append(
                self.add_weight(
                    name=f"mask_{i}", shape=weight.shape, dtype=weight.dtype,
                    initializer="ones", trainable=False,
                )
            )
            self._thresholds.append(
                self.add_weight(
                    name=f"threshold_{i}", shape=(), dtype=weight.dtype,
                    initializer="zeros", trainable=False,
                )
            )
        if constraints_hold_masks():
            for weight, mask in zip(weights, self._masks):
                weight.constraint = MaskConstraint(mask, inner=weight.constraint)
        self.built = True

    def release_constraints(self) -> None:
        """Restores the variables' own constraints (used when the wrapper is stripped)."""
        for weight in self.prunable_weights():
            if isinstance(weight.constraint, MaskConstraint):
                weight.constraint = weight.constraint.inner

    # -- forward ----------------------------------------------------------------------------

    def call(self, inputs, *args, training=None, **kwargs):
        if training and not self.driven:
            raise ValueError(
                f"Layer '{self.name}' is being trained without the pruning step callback. "
                "Add keras_prune.UpdatePruningStep() to fit(callbacks=[...]); in a custom "
                "training loop call its on_train_begin() before the first step and "
                "on_train_batch_begin(step) before each step (see the README)."
            )
        backend = _backend.current()
        token = None
        if training:
            # Counted (and, with several steps per execution, acted on) inside the train step,
            # so the step is exact however steps are batched, and a model saved mid-epoch
            # resumes exactly.
            if self.updates_in_step:
                with no_autocast():
                    token = backend.update_in_step(self, keras.ops.convert_to_tensor(self.pruning_step))
            self.pruning_step.assign_add(1)
        return backend.call_layer(self, token, inputs, *args, training=training, **kwargs)

    def compute_mask(self, inputs, mask=None):
        return self.layer.compute_mask(inputs, mask)

    # -- masks ------------------------------------------------------------------------------

    def prunable_weights(self) -> list:
        """The wrapped layer's prunable variables, in the order of :meth:`masks`."""
        return registry.prunable_weights(self.layer)

    @property
    def mask_variables(self) -> list:
        """The mask variables, one per prunable weight (1.0 keeps a weight)."""
        return list(self._masks)

    @property
    def threshold_variables(self) -> list:
        """The largest pruned magnitude per weight at the last update, as variables."""
        return list(self._thresholds)

    def host_update(self, step: int, values: list[np.ndarray]) -> list[np.ndarray]:
        """New masks and thresholds at ``step`` for this wrapper's weights, computed on the host.

        Args:
            step: the training step whose update this is.
            values: the current (masked) values of every weight of :attr:`mask_group`, in order.

        Returns:
            One 0/1 mask per prunable weight, then one threshold per prunable weight, in the
            weights' dtypes.
        """
        group = self.mask_group
        keep = group.keep_at(step, values)[group.members.index(self)]
        start = group.offset(self)
        own = values[start:start + len(keep)]
        dtypes = [np.dtype(w.dtype) for w in self.prunable_weights()]
        thresholds = [criteria.pruned_threshold(criteria.magnitude(v), k) for v, k in zip(own, keep)]
        return [k.astype(d) for k, d in zip(keep, dtypes)] + [np.asarray(t, d) for t, d in zip(thresholds, dtypes)]

    def update_from_host(self, step: int) -> None:
        """Recomputes this wrapper's masks for ``step`` from the host and zeroes what they prune."""
        group = self.mask_group
        values = [_host.read(w) for member in group.members for w in member.prunable_weights()]
        keep = group.keep_at(step, values)[group.members.index(self)]
        start = group.offset(self)
        self.assign_masks(keep, values[start:start + len(keep)])

    def masks(self) -> list[np.ndarray]:
        """The current masks as boolean arrays (``True`` keeps a weight)."""
        return [keras.ops.convert_to_numpy(m) > 0.5 for m in self._masks]

    def thresholds(self) -> list[float]:
        """The largest pruned magnitude per weight at the last update (0.0 before any)."""
        return [float(keras.ops.convert_to_numpy(t)) for t in self._thresholds]

    def weight_values(self) -> list[np.ndarray]:
        """The current values of the prunable weights, as numpy arrays."""
        return [_host.read(w) for w in self.prunable_weights()]

    def scores(self, values: list[np.ndarray] | None = None) -> list[np.ndarray]:
        """Magnitude importance of each prunable weight (of ``values`` if given)."""
        return [criteria.magnitude(v) for v in (values if values is not None else self.weight_values())]

    def compute_masks(self, sparsity: float, scores: list[np.ndarray] | None = None) -> list[np.ndarray]:
        """Masks for ``sparsity`` under this wrapper's pattern, one per weight (layer scope)."""
        return [
            masks.pattern_mask(
                score, sparsity, self.block_size, self.block_pooling_type, self.sparsity_m_by_n
            )
            for score in (scores if scores is not None else self.scores())
        ]

    def assign_masks(self, keep: list[np.ndarray], values: list[np.ndarray] | None = None) -> None:
        """Sets the masks and zeroes the pruned weights now; the masks then hold in training.

        Args:
            keep: one boolean array per prunable weight, shaped like it (``True`` keeps).
            values: the weights' current values, if already at hand (saves a read).
        """
        weights = self.prunable_weights()
        if len(keep) != len(weights):
            raise ValueError(
                f"Argument `keep` must hold {len(weights)} masks for layer '{self.name}'. "
                f"Received: {len(keep)} masks"
            )
        keep = [np.asarray(k, dtype=bool) for k in keep]
        for weight, k in zip(weights, keep):
            if k.shape != tuple(weight.shape):
                raise ValueError(
                    f"Mask for '{weight.path}' must have shape {tuple(weight.shape)}. "
                    f"Received: shape={k.shape}"
                )
        values = values if values is not None else self.weight_values()
        # All in numpy, then one assign per variable: a mask update runs every `frequency`
        # steps, and eager backend ops per tensor would cost more than the ranking itself.
        for weight, mask, threshold, k, value in zip(weights, self._masks, self._thresholds, keep, values):
            _host.write(threshold, criteria.pruned_threshold(criteria.magnitude(value), k))
            _host.write(mask, k)
            _host.write(weight, masks.zero_pruned(value, k))

    def apply_masks(self) -> None:
        """Zeroes every pruned position again (after an optimizer that may have moved it)."""
        for weight, mask in zip(self.prunable_weights(), self._masks):
            weight.assign(keep_masked(weight, mask))

    # -- serialization ----------------------------------------------------------------------

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "pruning_schedule": keras.saving.serialize_keras_object(self.pruning_schedule),
                "block_size": list(self.block_size),
                "block_pooling_type": self.block_pooling_type,
                "sparsity_m_by_n": list(self.sparsity_m_by_n) if self.sparsity_m_by_n else None,
                "scope": self.scope,
            }
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["pruning_schedule"] = keras.saving.deserialize_keras_object(
            config["pruning_schedule"], custom_objects=custom_objects
        )
        config["block_size"] = tuple(config["block_size"])
        if config.get("sparsity_m_by_n"):
            config["sparsity_m_by_n"] = tuple(config["sparsity_m_by_n"])
        return super().from_config(config, custom_objects=custom_objects)


class MaskGroup:
    """Wrappers whose masks are ranked together: one wrapper, or all that share a global scope.

    The masks of an update step are computed once, by whichever member's forward pass comes
    first, and handed to the others.
    """

    def __init__(self, members: list[PruneLowMagnitude]):
        self.members = list(members)
        self._step: int | None = None
        self._keep: list[list[np.ndarray]] = []

    def offset(self, wrapper: PruneLowMagnitude) -> int:
        """Where ``wrapper``'s weights start in the group's list of weight values."""
        index = self.members.index(wrapper)
        return sum(len(m.prunable_weights()) for m in self.members[:index])

    def keep_at(self, step: int, values: list[np.ndarray]) -> list[list[np.ndarray]]:
        """Each member's boolean masks at ``step`` for the weight ``values`` of the whole group."""
        if self._step != step:
            self._keep = self._compute(step, values)
            self._step = step
        return self._keep

    def _compute(self, step: int, values: list[np.ndarray]) -> list[list[np.ndarray]]:
        first = self.members[0]
        sparsity = first.pruning_schedule.sparsity_at(step)
        scores = [criteria.magnitude(v) for v in values]
        self._check_finite(step, scores)
        if len(self.members) == 1 and first.scope != "global":
            return [first.compute_masks(sparsity, scores)]
        keep = masks.global_sparsity_masks(scores, sparsity)
        split = []
        for member in self.members:
            count = len(member.prunable_weights())
            split.append(keep[:count])
            keep = keep[count:]
        return split

    def _check_finite(self, step: int, scores: list[np.ndarray]) -> None:
        """Diverged weights would rank as the smallest and be pruned to zero, hiding the divergence."""
        weights = [w for member in self.members for w in member.prunable_weights()]
        for weight, score in zip(weights, scores):
            if not np.isfinite(score.max()):  # a max propagates NaN and keeps inf: one cheap pass
                raise ValueError(
                    f"Weight '{weight.path}' holds NaN or infinite values at pruning step {step}: "
                    "training diverged. Lower the learning rate or check the data for NaN/inf."
                )


def check_layer(layer: object) -> None:
    """Raises unless ``layer`` is a layer that can be wrapped for pruning."""
    if isinstance(layer, PruneLowMagnitude):
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
