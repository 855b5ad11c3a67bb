"""Gradual structured pruning: channel masks grow with a schedule, then physical removal.

During ``fit``, the callback zeroes every weight slice of the channels its schedule says
to prune (producer columns, biases, BatchNorm scales and the consumers' input rows), and
keeps them at zero after each optimizer step. At the end, :meth:`shrink` removes those
channels for real; because they were all zero, the smaller model computes the same outputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from keras_prune._validation import check_choice, check_int
from keras_prune.schedules import PruningSchedule
from keras_prune.structured.graph import ChannelGraph
from keras_prune.structured.importance import IMPORTANCES, unit_scores
from keras_prune.structured.plan import SCOPES, ChannelPlan, plan_removal
from keras_prune.structured.surgery import apply_plan, removal_masks


class GradualChannelPruning(keras.callbacks.Callback):
    """A ``fit`` callback that prunes channels on a schedule; ``shrink()`` then removes them.

    The step is the optimizer's iteration count, so several ``fit`` calls continue the
    schedule. On each update step, units are ranked again; already-zero units score lowest,
    so the pruned set only grows.

    Args:
        pruning_schedule: a :class:`keras_prune.PruningSchedule`; its sparsity is the
            fraction of channels removed per group.
        importance: ``"l1"``, ``"l2"`` or ``"bn_scale"``.
        scope: ``"layer"`` or ``"global"``.
        round_to: keep channel counts at multiples of this.
        exclude: names of layers to leave untouched.

    Example:
        >>> from keras_prune import PolynomialDecay
        >>> callback = GradualChannelPruning(PolynomialDecay(0.0, 0.5, 0, 100))
        >>> # model.fit(x, y, epochs=3, callbacks=[callback])
        >>> # small = callback.shrink()
    """

    def __init__(
        self,
        pruning_schedule: PruningSchedule,
        *,
        importance: str = "l1",
        scope: str = "layer",
        round_to: int = 1,
        exclude: Sequence[str] = (),
    ):
        super().__init__()
        if not isinstance(pruning_schedule, PruningSchedule):
            raise TypeError(
                "Argument `pruning_schedule` must be a keras_prune.PruningSchedule, e.g. "
                f"PolynomialDecay(0.0, 0.5, 0, 1000). Received: pruning_schedule={pruning_schedule!r}"
            )
        check_choice("importance", importance, tuple(i for i in IMPORTANCES if i != "taylor"))
        check_choice("scope", scope, SCOPES)
        check_int("round_to", round_to, 1)
        self.pruning_schedule = pruning_schedule
        self.importance, self.scope, self.round_to = importance, scope, round_to
        self.exclude = tuple([exclude] if isinstance(exclude, str) else exclude)
        self.plan: ChannelPlan | None = None
        self._graph: ChannelGraph | None = None
        self._masks: list = []

    def on_train_begin(self, logs=None):
        if self._graph is None or self._graph.model is not self.model:
            self._graph = ChannelGraph(self.model, self.exclude)

    def on_train_batch_begin(self, batch, logs=None):
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        should_update, sparsity = self.pruning_schedule(step)
        if should_update:
            self.update(sparsity)

    def on_train_batch_end(self, batch, logs=None):
        self._apply_masks()

    def update(self, ratio: float) -> ChannelPlan:
        """Ranks the units now, zeroes the lowest ``ratio`` of each group, and keeps them so."""
        self._sync()
        graph = self._graph or ChannelGraph(self.model, self.exclude)
        self._graph = graph
        scores = unit_scores(graph, self.importance)
        self.plan = plan_removal(graph, scores, ratio, scope=self.scope, round_to=self.round_to)
        self._masks = removal_masks(self.plan)
        self._apply_masks()
        return self.plan

    def shrink(self) -> keras.Model:
        """Returns the smaller dense model without the pruned channels (weights copied)."""
        if self.plan is None:
            raise ValueError(
                "GradualChannelPruning has not pruned anything yet: train with it in "
                "`fit(callbacks=[...])` until its schedule's first update step."
            )
        return apply_plan(self.plan)

    def _sync(self) -> None:
        # On JAX, fit keeps the weights outside the variables between steps; writing them
        # back makes the next step pick up our zeros.
        sync = getattr(self.model, "jax_state_sync", None)
        if sync is not None:
            sync()

    def _apply_masks(self) -> None:
        if self._masks:
            self._sync()
        for variable, mask in self._masks:
            variable.assign(keras.ops.multiply(variable, mask))

