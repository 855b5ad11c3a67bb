"""Callbacks that drive pruning during ``fit``: the step counter and TensorBoard summaries."""

from __future__ import annotations

from collections import defaultdict

import keras
import numpy as np

from keras_prune import _backend, _host
from keras_prune._keras_compat import call_takes_training, inner_layers
from keras_prune.core import MaskGroup, PruningState, constraints_hold_masks, pruning_state_of
from keras_prune.wrapper import PruneLowMagnitude


def collect_pruning(model: keras.layers.Layer) -> list[PruningState]:
    """The pruning state in ``model``: itself if it is a ``PrunedModel``, or its wrappers."""
    if isinstance(model, PruningState):
        return [model]
    found = []
    for layer in inner_layers(model):
        if isinstance(layer, PruningState) and layer not in found:
            found.append(layer)
    return found


def update_masks(states: list[PruningState], step: int) -> list[PruningState]:
    """Recomputes, from the host, the masks of the pruning states whose schedule updates at ``step``.

    Each state's ``mask_group`` decides what is ranked together (one layer or model, or
    every globally-scoped wrapper sharing a schedule). Returns the updated states.
    """
    due = [w for w in states if w.pruning_schedule.should_update(step)]
    for state in due:
        state.update_from_host(step)
    return due


class UpdatePruningStep(keras.callbacks.Callback):
    """Drives pruning during ``fit``: the step counter, mask updates, zeros between steps.

    Required in ``fit(callbacks=[...])`` to train a pruned model. The step is
    counted inside the train step (the ``pruning_step`` variable), so a model saved
    at any point resumes on the exact same step. With one step per batch the masks are
    recomputed here, from the host, before the schedule's update steps; a model compiled with
    ``steps_per_execution > 1`` recomputes them inside the compiled step, so it gets the masks
    of a plain ``fit``. In a custom training loop, drive it by hand:

    >>> # callback = UpdatePruningStep(); callback.set_model(model); callback.on_train_begin()
    >>> # for each batch: callback.on_train_batch_begin(i); <gradient step>;
    >>> #                 callback.on_train_batch_end(i)
    >>> # at the end: callback.on_train_end()

    Several steps per execution are refused on TensorFlow with ``jit_compile=True`` (XLA cannot
    call the host) and for a model whose ``call()`` takes no ``training`` argument.
    """

    def __init__(self):
        super().__init__()
        self.step = 0
        self._states: list[PruningState] = []
        self._in_step = True

    def on_train_begin(self, logs=None):
        self._states = collect_pruning(self.model)
        if not self._states:
            _check_not_inside_a_pruned_model(self.model)
            return
        self._in_step = _updates_in_step(self.model)
        steps = [int(keras.ops.convert_to_numpy(w.pruning_step)) for w in self._states]
        for state, step in zip(self._states, steps):
            if step > 0:  # masks assigned by an update: the weights must still agree with them
                check_masks_current(state)
        self.step = self._start = max(0, max(steps))
        self._checked = False
        for group in mask_groups(self._states):
            for state in group.members:
                state.mask_group = group
                state.updates_in_step = self._in_step
                state.pruning_step.assign(self.step)
                state.driven = True

    @property
    def async_safe(self) -> bool:
        # Where constraints hold the zeros, the batch-end hook does nothing, so Keras may keep
        # dispatching batch ends asynchronously instead of waiting on every batch.
        return constraints_hold_masks()

    def on_train_batch_begin(self, batch, logs=None):
        if self._in_step or not self._states:
            return
        # One batch is one step on this path (steps_per_execution is 1).
        if any(w.pruning_schedule.should_update(self.step) for w in self._states):
            self.model  # noqa: B018  (on JAX, reading `model` syncs the train state into the variables)
            update_masks(self._states, self.step)
        self.step += 1

    def on_train_batch_end(self, batch, logs=None):
        if self._states and not constraints_hold_masks():
            self.model  # noqa: B018  (sync on JAX, so the re-zeroed weights feed the next step)
            self._apply_masks()
        if self._in_step and self._states and not self._checked:
            self._check_counting()

    def on_epoch_end(self, epoch, logs=None):
        # Optimizers that overwrite weights outside the update (EMA) may have refilled zeros.
        if self._states:
            self.model  # noqa: B018  (sync on JAX)
            self._apply_masks()
            if not self._in_step:  # a model fit in inference mode does not count steps itself
                for state in self._states:
                    _host.write(state.pruning_step, np.int32(self.step))

    def _check_counting(self):
        """After the first batch: a forward pass not in training mode would prune nothing, silently."""
        self._checked = True
        self.model  # noqa: B018  (sync on JAX)
        if int(_host.read(self._states[0].pruning_step)) == self._start:
            raise ValueError(
                f"Model '{self.model.name}' trained a batch but its pruning layers were not called "
                "in training mode, so no pruning step was counted. Call the model with "
                "training=True in the train step (a custom call() must pass `training` on)."
            )

    def on_train_end(self, logs=None):
        self.on_epoch_end(-1)
        for state in self._states:
            self.step = max(self.step, int(_host.read(state.pruning_step)))
            state.driven = False

    def _apply_masks(self):
        for state in self._states:
            state.apply_masks()


def _check_not_inside_a_pruned_model(model) -> None:
    """Training the model a ``PrunedModel`` holds, instead of the pruned model, would not prune it."""
    holder = next((pruning_state_of(w) for w in model.weights if pruning_state_of(w)), None)
    if holder is not None:
        raise ValueError(
            f"Model '{model.name}' is held by the pruned model '{holder.name}': train that one "
            "(the model prune_low_magnitude() returned), or strip_pruning() it first to train "
            "this model without pruning."
        )


def check_masks_current(state: PruningState) -> None:
    """Raises if a weight is nonzero where its mask prunes it (changed outside pruned training).

    Such a weight was set by something that does not know the masks (``set_weights``,
    ``load_weights``, one-shot pruning of the model inside): training on would silently keep
    masks that no longer describe the weights.
    """
    for name, weight, mask in zip(state.weight_names(), state.prunable_weights(), state.mask_variables):
        if np.any(_host.read(weight)[_host.read(mask) < 0.5] != 0):
            raise ValueError(
                f"Weight '{name}' of '{state.name}' is nonzero where its mask prunes it: the weights "
                "changed outside pruned training (set_weights, load_weights...), so its masks are out "
                "of date. Call keras_prune.strip_pruning() on it and prune the result again, or "
                "apply_masks() to zero those weights and keep the masks."
            )


def mask_groups(states: list[PruningState]) -> list[MaskGroup]:
    """One group per pruned model or layer-scoped wrapper, one per schedule shared by global wrappers."""
    groups, global_members = [], defaultdict(list)
    for state in states:
        if state.scope == "global" and isinstance(state, PruneLowMagnitude):
            global_members[repr(state.pruning_schedule)].append(state)
        else:
            groups.append(MaskGroup([state]))
    return groups + [MaskGroup(members) for members in global_members.values()]


def _updates_in_step(model) -> bool:
    """Whether masks update inside the train step (needed for several steps per execution).

    With one step per batch, the callback updates them from the host before the step, the
    cheapest way. Several steps per execution need the update inside the compiled step, which
    cannot call the host under XLA on TensorFlow, nor count steps when the model's ``call`` has
    no ``training`` argument (``fit`` then calls it in inference mode).
    """
    steps_per_execution = getattr(model, "steps_per_execution", 1) or 1
    if steps_per_execution <= 1:
        return False
    if not call_takes_training(model):
        reason = (f"the call() of model '{model.name}' takes no `training` argument; add "
                  "`training=None` to it and pass it on to the layers")
    elif (problem := _backend.current().in_step_problem(model)) is not None:
        reason = problem
    else:
        return True
    raise ValueError(
        f"Pruning cannot count steps_per_execution={steps_per_execution} steps per batch here: "
        f"{reason}, or compile with steps_per_execution=1."
    )


def weight_sparsities(state: PruningState) -> list[tuple[str, float, float]]:
    """``(weight path, sparsity, threshold)`` for each prunable weight of ``state``."""
    rows = []
    for name, keep, threshold in zip(state.weight_names(), state.masks(), state.thresholds()):
        rows.append((name, 1.0 - float(np.mean(keep)), threshold))
    return rows


class PruningSummaries(keras.callbacks.TensorBoard):
    """TensorBoard logging plus, per pruned weight, its sparsity and threshold each epoch.

    Scalars are named ``<weight path>/pruning_sparsity`` and ``<weight path>/threshold``
    (needs TensorFlow for writing event files, like Keras's own TensorBoard callback).

    Args:
        log_dir: folder for the event files.
        **kwargs: passed on to ``keras.callbacks.TensorBoard``.

    Example:
        >>> # model.fit(x, y, callbacks=[UpdatePruningStep(), PruningSummaries("logs")])
    """

    def __init__(self, log_dir: str, **kwargs):
        if not isinstance(log_dir, (str, bytes)) and not hasattr(log_dir, "__fspath__"):
            raise TypeError(f"Argument `log_dir` must be a path. Received: log_dir={log_dir!r}")
        super().__init__(log_dir=log_dir, **kwargs)

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        with self._train_writer.as_default():
            for state in collect_pruning(self.model):
                for path, sparsity, threshold in weight_sparsities(state):
                    self.summary.scalar(f"{path}/pruning_sparsity", sparsity, step=epoch)
                    self.summary.scalar(f"{path}/threshold", threshold, step=epoch)
        self._train_writer.flush()
