"""Pruning schedules: a training step -> (update the masks now?, target sparsity).

Schedules are pure functions of the step with tfmot's semantics: masks update only when
``begin_step <= step <= end_step`` (``end_step == -1`` means "forever") and
``(step - begin_step) % frequency == 0``.
"""

from __future__ import annotations

import abc
import math

import keras

from keras_prune._validation import check_int, check_sparsity

_PACKAGE = "keras_prune"
_INT32_MAX = 2**31 - 1  # the step counter is int32; later steps are never reached


class PruningSchedule(abc.ABC):
    """Base class: maps a training step to ``(should_update, sparsity)``.

    Subclasses implement :meth:`sparsity_at` and :meth:`get_config`; the update rule
    (begin, end, frequency) is shared.
    """

    begin_step: int
    end_step: int
    frequency: int

    def should_update(self, step: int) -> bool:
        """Whether masks are recomputed at ``step``."""
        step = int(step)
        in_range = step >= self.begin_step and (self.end_step < 0 or step <= self.end_step)
        return in_range and (step - self.begin_step) % self.frequency == 0

    @abc.abstractmethod
    def sparsity_at(self, step: int) -> float:
        """The target sparsity at ``step``."""

    def __call__(self, step: int) -> tuple[bool, float]:
        """Returns ``(should_update, sparsity)`` for ``step``, as tfmot's schedules do."""
        return self.should_update(step), self.sparsity_at(step)

    def update_condition(self, step):
        """:meth:`should_update` as a boolean tensor of the int32 step tensor ``step``.

        Used inside compiled train steps; a schedule without ``begin_step``, ``end_step`` and
        ``frequency`` overrides it.
        """
        ops = keras.ops
        begin, frequency = min(self.begin_step, _INT32_MAX), min(self.frequency, _INT32_MAX)
        due = ops.logical_and(ops.greater_equal(step, begin), ops.equal(ops.mod(step - begin, frequency), 0))
        if self.end_step >= 0:
            due = ops.logical_and(due, ops.less_equal(step, min(self.end_step, _INT32_MAX)))
        return due

    @abc.abstractmethod
    def get_config(self) -> dict:
        """The constructor arguments, for serialization."""

    @classmethod
    def from_config(cls, config: dict) -> PruningSchedule:
        return cls(**config)

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


def _check_steps(begin_step: int, end_step: int, frequency: int, allow_forever: bool) -> None:
    check_int("begin_step", begin_step, minimum=0)
    check_int("frequency", frequency, minimum=1)
    check_int("end_step", end_step, minimum=-1 if allow_forever else 0)
    if end_step != -1 and end_step < begin_step:
        raise ValueError(
            "Argument `end_step` must be -1 or >= `begin_step`. "
            f"Received: begin_step={begin_step}, end_step={end_step}"
        )


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ConstantSparsity(PruningSchedule):
    """Prune to one fixed sparsity, every ``frequency`` steps from ``begin_step``.

    Args:
        target_sparsity: fraction of weights to prune, in [0, 1).
        begin_step: first step at which masks update.
        end_step: last step at which masks may update; -1 means never stop.
        frequency: masks update every ``frequency`` steps.

    Example:
        >>> schedule = ConstantSparsity(0.5, begin_step=10, frequency=5)
        >>> schedule(10), schedule(12), schedule(15)
        ((True, 0.5), (False, 0.5), (True, 0.5))
    """

    def __init__(
        self,
        target_sparsity: float,
        begin_step: int,
        end_step: int = -1,
        frequency: int = 100,
    ):
        check_sparsity("target_sparsity", target_sparsity)
        _check_steps(begin_step, end_step, frequency, allow_forever=True)
        self.target_sparsity = float(target_sparsity)
        self.begin_step = int(begin_step)
        self.end_step = int(end_step)
        self.frequency = int(frequency)

    def sparsity_at(self, step: int) -> float:
        return self.target_sparsity

    def get_config(self) -> dict:
        return {
            "target_sparsity": self.target_sparsity,
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "frequency": self.frequency,
        }


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PolynomialDecay(PruningSchedule):
    """Sparsity rising from ``initial_sparsity`` to ``final_sparsity`` on a polynomial curve.

    ``s(step) = final + (initial - final) * (1 - p) ** power`` with
    ``p = clip((step - begin_step) / (end_step - begin_step), 0, 1)`` (Zhu & Gupta, 2017).

    Args:
        initial_sparsity: sparsity at ``begin_step``, in [0, 1).
        final_sparsity: sparsity at ``end_step`` and after, in [0, 1).
        begin_step: first step at which masks update.
        end_step: last step at which masks update; must be > ``begin_step``.
        power: exponent of the curve; 3 prunes fast early and gently late.
        frequency: masks update every ``frequency`` steps.

    Example:
        >>> schedule = PolynomialDecay(0.2, 0.8, begin_step=100, end_step=110, frequency=2)
        >>> [round(schedule.sparsity_at(s), 4) for s in (100, 102, 105, 110)]
        [0.2, 0.4928, 0.725, 0.8]
    """

    def __init__(
        self,
        initial_sparsity: float,
        final_sparsity: float,
        begin_step: int,
        end_step: int,
        power: float = 3,
        frequency: int = 100,
    ):
        check_sparsity("initial_sparsity", initial_sparsity)
        check_sparsity("final_sparsity", final_sparsity)
        _check_steps(begin_step, end_step, frequency, allow_forever=False)
        if end_step == begin_step:
            raise ValueError(
                "Argument `end_step` must be greater than `begin_step` for PolynomialDecay. "
                f"Received: begin_step={begin_step}, end_step={end_step}"
            )
        if isinstance(power, bool) or not isinstance(power, (int, float)) or not math.isfinite(power):
            raise TypeError(f"Argument `power` must be a finite number. Received: power={power!r}")
        self.initial_sparsity = float(initial_sparsity)
        self.final_sparsity = float(final_sparsity)
        self.begin_step = int(begin_step)
        self.end_step = int(end_step)
        self.power = power
        self.frequency = int(frequency)

    def sparsity_at(self, step: int) -> float:
        span = self.end_step - self.begin_step
        progress = min(1.0, max(0.0, (int(step) - self.begin_step) / span))
        delta = self.initial_sparsity - self.final_sparsity
        return self.final_sparsity + delta * (1.0 - progress) ** self.power

    def get_config(self) -> dict:
        return {
            "initial_sparsity": self.initial_sparsity,
            "final_sparsity": self.final_sparsity,
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "power": self.power,
            "frequency": self.frequency,
        }
