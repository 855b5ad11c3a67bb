"""The pruning core: masks, thresholds and a step kept with the variables they prune.

:class:`PruningState` is what :class:`keras_prune.PrunedModel` (a whole model, any depth)
and :class:`keras_prune.PruneLowMagnitude` (one layer, tfmot-style) share: a 0/1 mask and a
threshold variable next to each pruned weight, a step counter, and the forward pass that
counts steps. The forward pass is the pruned layer's, unchanged: pruned weights are kept at
exactly 0.0 in the variables themselves, so no masking is needed on the hot path.

How the zeros are kept:

* On the TensorFlow and PyTorch backends, each pruned variable gets a constraint that
  multiplies it by its mask. Keras optimizers apply variable constraints right after every
  update, so pruned positions are 0.0 after each step, for every optimizer (momentum, Adam,
  AdamW's decoupled weight decay, ...), inside the compiled train step and at no extra pass.
  The product is the cheapest masking op, but leaves -0.0 where the optimizer pushed a pruned
  weight negative; mask updates and the end of each epoch write +0.0 (see ``keep_masked``),
  which is what saved and stripped models hold.
* On JAX, the compiled train step cannot read a mask that changes between steps from a
  constraint, so ``UpdatePruningStep`` re-applies the masks after every batch instead, and the
  pruned layer runs on its weights times their masks within a step.

Masks change only on the schedule's update steps. The step is counted inside the train step.
With one step per batch, ``UpdatePruningStep`` recomputes the masks from the host before the
step; with several steps per execution they are recomputed inside the compiled step (see
:mod:`keras_prune._backend`), so ``steps_per_execution`` prunes exactly as a plain ``fit``.
"""

from __future__ import annotations

import keras
import numpy as np

from keras_prune import _backend, _host, criteria, masks
from keras_prune._keras_compat import no_autocast, untracked
from keras_prune._validation import check_choice
from keras_prune.schedules import PruningSchedule

PACKAGE = "keras_prune"
SCOPES = ("layer", "global")
UNSTARTED = -1  # pruning_step before UpdatePruningStep has run


def keep_masked(weight, mask):
    """``weight`` where ``mask`` is 1, else +0.0 (a product would leave -0.0, which compresses worse)."""
    weight = keras.ops.convert_to_tensor(weight)
    return keras.ops.where(keras.ops.greater(mask, 0.5), weight, keras.ops.cast(0, weight.dtype))


class MaskConstraint(keras.constraints.Constraint):
    """Zeroes a variable's pruned positions after each optimizer update (after its own constraint).

    A product, not ``keep_masked``: it runs in every train step, where a select costs twice as much.

    Runtime state only: the pruning state re-attaches it when built, so it is never serialized.
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
    return _backend.current().CONSTRAINTS_READ_VARIABLES


def final_sparsity(schedule: PruningSchedule) -> float:
    """The sparsity a schedule ends at (its value long after its last step)."""
    return float(schedule.sparsity_at(2**30))


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


def pruning_state_of(variable) -> PruningState | None:
    """The pruning state that holds masks for ``variable``, if it is being pruned."""
    return getattr(variable, "_keras_prune_state", None)


class PruningState:
    """Mixin for the Keras layer that holds pruning state: masks, thresholds, step, schedule.

    The layer sets :attr:`layer` (what it prunes), calls :meth:`init_pruning` in its
    constructor and :meth:`create_state` with the variables to prune once they exist, and
    runs its forward pass through :meth:`pruned_call`.
    """

    layer: keras.layers.Layer

    def init_pruning(self, schedule, block_size, block_pooling_type, sparsity_m_by_n, scope) -> None:
        self.pruning_schedule = check_schedule(schedule)
        self.block_size, self.block_pooling_type, self.sparsity_m_by_n = masks.check_pattern(
            block_size, block_pooling_type, sparsity_m_by_n
        )
        self.scope = check_scope(scope, self.block_size, self.sparsity_m_by_n)
        self.driven = False  # set by UpdatePruningStep; training without it is an error
        self.updates_in_step = False  # set by UpdatePruningStep for several steps per execution
        self.mask_group = MaskGroup([self])  # UpdatePruningStep groups globally-scoped wrappers
        self._pruned: list = []
        self._masks: list = []
        self._thresholds: list = []

    def create_state(self, weights: list, input_axes: list[int]) -> None:
        """Creates the step counter and a mask and threshold per weight (in this order, for saving).

        ``input_axes`` are the weights' input axes, along which N:M patterns group them.
        """
        self.pruning_step = self.add_weight(
            name="pruning_step",
            shape=(),
            dtype="int32",  # int64 is not native on JAX; 2**31 steps is plenty
            initializer=keras.initializers.Constant(UNSTARTED),
            trainable=False,
        )
        for i, weight in enumerate(weights):
            self._masks.append(self.add_weight(
                name=f"mask_{i}", shape=weight.shape, dtype=weight.dtype, initializer="ones", trainable=False,
            ))
            self._thresholds.append(self.add_weight(
                name=f"threshold_{i}", shape=(), dtype=weight.dtype, initializer="zeros", trainable=False,
            ))
        _backend.current().place_masks(self.name, weights, self._masks)
        with untracked():  # the pruned layer owns these variables; this state only points at them
            self._pruned = list(weights)
            self._input_axes = list(input_axes)
        for weight in weights:
            weight._keras_prune_state = self  # so pruning it again, or one-shot, can refuse
        if constraints_hold_masks():
            for weight, mask in zip(weights, self._masks):
                weight.constraint = MaskConstraint(mask, inner=weight.constraint)
        self.built = True

    def release_constraints(self) -> None:
        """Restores the variables' own constraints and writes +0.0 at every pruned position."""
        if self._masks:
            self.apply_masks()
        for weight in self._pruned:
            if isinstance(weight.constraint, MaskConstraint):
                weight.constraint = weight.constraint.inner
            weight._keras_prune_state = None

    # -- forward ----------------------------------------------------------------------------

    def pruned_call(self, *args, training=None, **kwargs):
        """The pruned layer's forward pass; in training, counts the step (and may update masks)."""
        if training and not self.driven:
            raise ValueError(
                f"'{self.name}' is being trained without the pruning step callback. "
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
        return backend.call_layer(self, token, *args, training=training, **kwargs)

    # -- masks ------------------------------------------------------------------------------

    def prunable_weights(self) -> list:
        """The pruned variables, in the order of :meth:`masks`."""
        return list(self._pruned)

    def weight_names(self) -> list[str]:
        """A name per pruned weight, in the order of :meth:`masks` (for logs and summaries)."""
        return [w.path for w in self._pruned]

    @property
    def mask_variables(self) -> list:
        """The mask variables, one per pruned weight (1.0 keeps a weight)."""
        return list(self._masks)

    @property
    def threshold_variables(self) -> list:
        """The largest pruned magnitude per weight at the last update, as variables."""
        return list(self._thresholds)

    def host_update(self, step: int, values: list[np.ndarray]) -> list[np.ndarray]:
        """New masks and thresholds at ``step`` for this state's weights, computed on the host.

        Args:
            step: the training step whose update this is.
            values: the current (masked) values of every weight of :attr:`mask_group`, in order.

        Returns:
            One 0/1 mask per pruned weight, then one threshold per pruned weight, in the
            weights' dtypes.
        """
        keep, own = self._own_keep(step, values)
        dtypes = [np.dtype(w.dtype) for w in self._pruned]
        thresholds = [criteria.pruned_threshold(criteria.magnitude(v), k) for v, k in zip(own, keep)]
        return [k.astype(d) for k, d in zip(keep, dtypes)] + [np.asarray(t, d) for t, d in zip(thresholds, dtypes)]

    def update_from_host(self, step: int) -> None:
        """Recomputes the masks for ``step`` from the host and zeroes what they prune."""
        values = [_host.read(w) for member in self.mask_group.members for w in member.prunable_weights()]
        self.assign_masks(*self._own_keep(step, values))

    def _own_keep(self, step: int, values: list[np.ndarray]) -> tuple[list, list]:
        group = self.mask_group
        keep = group.keep_at(step, values)[group.members.index(self)]
        start = group.offset(self)
        return keep, values[start:start + len(keep)]

    def masks(self) -> list[np.ndarray]:
        """The current masks as boolean arrays (``True`` keeps a weight)."""
        return [keras.ops.convert_to_numpy(m) > 0.5 for m in self._masks]

    def thresholds(self) -> list[float]:
        """The largest pruned magnitude per weight at the last update (0.0 before any)."""
        return [float(keras.ops.convert_to_numpy(t)) for t in self._thresholds]

    def weight_values(self) -> list[np.ndarray]:
        """The current values of the pruned weights, as numpy arrays."""
        return [_host.read(w) for w in self._pruned]

    def compute_masks(self, sparsity: float, scores: list[np.ndarray]) -> list[np.ndarray]:
        """Masks for ``sparsity`` under this state's pattern, one per weight (each ranked alone)."""
        return [
            masks.pattern_mask(score, amount, self.block_size, self.block_pooling_type, self.sparsity_m_by_n, axis)
            for score, amount, axis in zip(scores, self.weight_amounts(sparsity, len(scores)), self._input_axes)
        ]

    def weight_amounts(self, sparsity: float, count: int) -> list[float]:
        """Each weight's sparsity when the schedule is at ``sparsity``: the same for all, or with
        per-weight targets (:attr:`weight_targets`), each target scaled by the schedule's progress
        towards its final sparsity (never above the target)."""
        targets = getattr(self, "weight_targets", None)
        if not targets:
            return [sparsity] * count
        final = final_sparsity(self.pruning_schedule)
        return [min(target, sparsity * target / final) for target in targets]

    def assign_masks(self, keep: list[np.ndarray], values: list[np.ndarray] | None = None) -> None:
        """Sets the masks and zeroes the pruned weights now; the masks then hold in training.

        Args:
            keep: one boolean array per pruned weight, shaped like it (``True`` keeps).
            values: the weights' current values, if already at hand (saves a read).
        """
        weights = self._pruned
        if len(keep) != len(weights):
            raise ValueError(
                f"Argument `keep` must hold {len(weights)} masks for '{self.name}'. Received: {len(keep)} masks"
            )
        keep = [np.asarray(k, dtype=bool) for k in keep]
        for weight, k in zip(weights, keep):
            if k.shape != tuple(weight.shape):
                raise ValueError(
                    f"Mask for '{weight.path}' must have shape {tuple(weight.shape)}. Received: shape={k.shape}"
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
        for weight, mask in zip(self._pruned, self._masks):
            weight.assign(keep_masked(weight, mask))

    # -- serialization ----------------------------------------------------------------------

    def pruning_config(self) -> dict:
        return {
            "pruning_schedule": keras.saving.serialize_keras_object(self.pruning_schedule),
            "block_size": list(self.block_size),
            "block_pooling_type": self.block_pooling_type,
            "sparsity_m_by_n": list(self.sparsity_m_by_n) if self.sparsity_m_by_n else None,
            "scope": self.scope,
        }

    @staticmethod
    def restore_pruning_config(config: dict, custom_objects=None) -> dict:
        config = dict(config)
        config["pruning_schedule"] = keras.saving.deserialize_keras_object(
            config["pruning_schedule"], custom_objects=custom_objects
        )
        config["block_size"] = tuple(config["block_size"])
        if config.get("sparsity_m_by_n"):
            config["sparsity_m_by_n"] = tuple(config["sparsity_m_by_n"])
        return config


class MaskGroup:
    """Pruning states whose masks are ranked together: one, or all that share a global scope.

    The masks of an update step are computed once, by whichever member's forward pass comes
    first, and handed to the others.
    """

    def __init__(self, members: list[PruningState]):
        self.members = list(members)
        self._step: int | None = None
        self._keep: list[list[np.ndarray]] = []

    def offset(self, member: PruningState) -> int:
        """Where ``member``'s weights start in the group's list of weight values."""
        index = self.members.index(member)
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
