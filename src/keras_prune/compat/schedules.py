"""tfmot's pruning schedules: ``schedule(step)`` returns a pair of tensors, steps count from 1.

tfmot counts a training step before it consults the schedule, so the first batch is step 1;
keras-prune's own schedules (:mod:`keras_prune.schedules`) are consulted at the number of
batches already done, from 0. :func:`core_schedule` bridges the two: the pruning core sees
a keras-prune schedule that asks the tfmot one at ``step + 1``.

A tfmot-style custom schedule subclasses :class:`PruningSchedule` and overrides
``__call__`` and ``get_config``, as tfmot's documentation shows.
"""

from __future__ import annotations

import abc

import keras
import numpy as np

from keras_prune import schedules as native

PACKAGE = "keras_prune.compat"


class PruningSchedule(abc.ABC):
    """tfmot's base class: ``schedule(step)`` -> ``(should_prune, sparsity)`` as tensors.

    Subclasses implement ``__call__`` (with ``keras.ops`` or TensorFlow ops, so it also runs
    inside a compiled train step) and ``get_config``.

    Example:
        >>> class Halfway(PruningSchedule):
        ...     def __call__(self, step):
        ...         return keras.ops.equal(step, 10), keras.ops.convert_to_tensor(0.5)
        ...     def get_config(self):
        ...         return {"class_name": "Halfway", "config": {}}
        >>> bool(Halfway()(10)[0])
        True
    """

    @abc.abstractmethod
    def __call__(self, step):
        """Returns ``(should_prune, sparsity)`` at ``step`` as a boolean and a float32 tensor."""

    @abc.abstractmethod
    def get_config(self) -> dict:
        """``{"class_name": ..., "config": {constructor arguments}}``, tfmot's form."""

    @classmethod
    def from_config(cls, config: dict) -> PruningSchedule:
        """Accepts tfmot's ``{"class_name", "config"}`` form or the bare constructor arguments."""
        if set(config) == {"class_name", "config"}:
            config = config["config"]
        return cls(**config)

    def should_prune_at(self, step: int) -> bool:
        """``self(step)[0]`` as a Python bool (built-in schedules answer without tensors)."""
        return bool(keras.ops.convert_to_numpy(self(step)[0]))

    def sparsity_at(self, step: int) -> float:
        """``self(step)[1]`` as a Python float."""
        return float(keras.ops.convert_to_numpy(self(step)[1]))


class _BuiltIn(PruningSchedule):
    """A tfmot schedule computed by its keras-prune twin (validation, update rule)."""

    _native: native.PruningSchedule

    def __getattr__(self, name):  # begin_step, frequency, target_sparsity, ...
        if name == "_native":
            raise AttributeError(name)
        return getattr(self._native, name)

    def should_prune_at(self, step: int) -> bool:
        return self._native.should_update(step)

    def _due(self, step):
        return self._native.update_condition(keras.ops.cast(step, "int32"))

    def get_config(self) -> dict:
        return {"class_name": type(self).__name__, "config": self._native.get_config()}

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self) -> int:  # hashable, so tf.function can take a schedule as an argument
        return hash(repr(self))

    def __repr__(self) -> str:
        return f"tfmot.{self._native!r}"


@keras.saving.register_keras_serializable(package=PACKAGE)
class ConstantSparsity(_BuiltIn):
    """tfmot's ``ConstantSparsity``: ``target_sparsity`` every ``frequency`` steps from ``begin_step``.

    Example:
        >>> should_prune, sparsity = ConstantSparsity(0.5, begin_step=0, frequency=100)(100)
        >>> bool(should_prune), float(sparsity)
        (True, 0.5)
    """

    def __init__(self, target_sparsity: float, begin_step: int, end_step: int = -1, frequency: int = 100):
        self._native = native.ConstantSparsity(target_sparsity, begin_step, end_step, frequency)

    def __call__(self, step):
        return self._due(step), keras.ops.convert_to_tensor(self._native.target_sparsity, "float32")


@keras.saving.register_keras_serializable(package=PACKAGE)
class PolynomialDecay(_BuiltIn):
    """tfmot's ``PolynomialDecay``, computed in float32 as tfmot does.

    Example:
        >>> schedule = PolynomialDecay(0.2, 0.6, begin_step=1, end_step=4, frequency=1)
        >>> round(float(schedule(1)[1]), 4), round(float(schedule(4)[1]), 4)
        (0.2, 0.6)
    """

    def __init__(self, initial_sparsity: float, final_sparsity: float, begin_step: int, end_step: int,
                 power: float = 3, frequency: int = 100):
        self._native = native.PolynomialDecay(initial_sparsity, final_sparsity, begin_step, end_step, power,
                                              frequency)

    def __call__(self, step):
        ops, schedule = keras.ops, self._native
        elapsed = ops.cast(ops.subtract(step, schedule.begin_step), "float32")
        progress = ops.clip(ops.divide(elapsed, float(schedule.end_step - schedule.begin_step)), 0.0, 1.0)
        decay = ops.power(ops.subtract(1.0, progress), float(schedule.power))
        delta = np.float32(schedule.initial_sparsity - schedule.final_sparsity)
        return self._due(step), ops.add(ops.multiply(delta, decay), np.float32(schedule.final_sparsity))


@keras.saving.register_keras_serializable(package=PACKAGE)
class StepPlusOne(native.PruningSchedule):
    """The keras-prune view of a tfmot schedule: asked at step ``s``, it answers for ``s + 1``.

    Args:
        schedule: a tfmot-style :class:`PruningSchedule`.

    Example:
        >>> core = StepPlusOne(ConstantSparsity(0.5, begin_step=0, frequency=100))
        >>> core.should_update(0), core.should_update(99)
        (False, True)
    """

    def __init__(self, schedule: PruningSchedule):
        if not isinstance(schedule, PruningSchedule):
            raise ValueError(
                "Argument `pruning_schedule` must be a tfmot PruningSchedule, such as "
                f"tfmot.sparsity.keras.ConstantSparsity(0.5, 0). Received: pruning_schedule={schedule!r}"
            )
        self.schedule = schedule

    def should_update(self, step: int) -> bool:
        return self.schedule.should_prune_at(int(step) + 1)

    def sparsity_at(self, step: int) -> float:
        return self.schedule.sparsity_at(int(step) + 1)

    def update_condition(self, step):
        return self.schedule(step + 1)[0]

    def get_config(self) -> dict:
        return {"schedule": keras.saving.serialize_keras_object(self.schedule)}

    @classmethod
    def from_config(cls, config: dict) -> StepPlusOne:
        return cls(keras.saving.deserialize_keras_object(config["schedule"]))

    def __repr__(self) -> str:
        return f"StepPlusOne({self.schedule!r})"


def core_schedule(schedule: object) -> native.PruningSchedule:
    """The schedule the pruning core runs: a tfmot one asked at ``step + 1``, a keras-prune one as is.

    Example:
        >>> core_schedule(ConstantSparsity(0.5, 0)).should_update(99)
        True
    """
    if isinstance(schedule, native.PruningSchedule):
        return schedule  # keras-prune's own schedules keep keras-prune's 0-based steps
    return StepPlusOne(schedule)
