"""Calibrated one-shot pruning: Wanda and SparseGPT from a few hundred examples, no training.

:func:`oneshot_prune` plans like :func:`keras_prune.magnitude_prune` (same selection, same
exact counts, same report), then prunes block by block in the order the model runs them:
a KerasHub transformer layer (any layer in a ``transformer_layers`` list) is one block, any
other linear layer its own. Each block is calibrated on the outputs of the blocks already
pruned before it, and only its statistics are held in memory (with the hidden states between
the layers of a transformer stack, see :mod:`keras_prune.layer_stack`).
"""

from __future__ import annotations

import contextlib
import math

import keras
import numpy as np
from rich.progress import track

from keras_prune._keras_compat import all_layers
from keras_prune._validation import check_choice, check_int
from keras_prune.analysis.report import LayerWarning, PruningReport, summarize
from keras_prune.calibration import (
    InputStatistics,
    batch_length,
    calibration_batches,
    call_order,
    forward,
    recording,
)
from keras_prune.criteria import Criterion, SparseGPT, Wanda
from keras_prune.handlers import input_axes
from keras_prune.layer_stack import LayerStack
from keras_prune.linear_views import LinearView, weight_views
from keras_prune.masks import zero_pruned
from keras_prune.oneshot import (
    LayerFilter,
    Sparsity,
    check_arguments,
    copy_model,
    magnitude_prune,
    pattern_warnings,
    plan_masks,
    select_weights,
    weight_key,
    weight_name,
)

METHODS = ("magnitude", "wanda", "sparsegpt")


def oneshot_prune(
    model: keras.Model,
    calibration_data: object = None,
    *,
    method: str = "sparsegpt",
    sparsity: Sparsity = None,
    sparsity_m_by_n: tuple[int, int] | None = None,
    scope: str = "layer",
    layers: LayerFilter = None,
    samples: int = 128,
    batch_size: int = 32,
    damping: float = 0.01,
    block_columns: int = 128,
    compensate: bool = True,
    inplace: bool = True,
    progress: bool = False,
) -> PruningReport:
    """Prunes a trained model once, choosing weights from calibration data, without training.

    Args:
        model: a built Keras model.
        calibration_data: examples the model accepts, batched: a NumPy array or a dict of
            arrays (optionally as an ``(x, y)`` tuple; ``y`` is not used), a
            ``tf.data.Dataset``, or an iterable of batches. Not needed for ``"magnitude"``.
        method: ``"sparsegpt"`` (mask by optimal brain surgeon scores and reconstruct the kept
            weights, see :class:`~keras_prune.criteria.SparseGPT`), ``"wanda"`` (``|w|`` times
            the input's norm, compared per output unit) or ``"magnitude"`` (as
            :func:`~keras_prune.magnitude_prune`).
        sparsity: the fraction of each selected tensor to prune (exact count), in [0, 1), or a
            mapping from weight keys to fractions (a :func:`keras_prune.allocate` result).
        sparsity_m_by_n: ``(m, n)`` prunes m of every n consecutive weights along the input
            axis (``(2, 4)``, ``(4, 8)``), instead of ``sparsity``.
        scope: ``"layer"``, or ``"global"``: each layer's count from one global magnitude
            ranking of all selected weights, then the method layer by layer.
        layers: which layers to prune, as in :func:`~keras_prune.magnitude_prune`.
        samples: how many calibration examples to use.
        batch_size: batch size for array calibration data.
        damping: SparseGPT's dampening, a fraction of the Hessian's mean diagonal.
        block_columns: SparseGPT's lazy block of features.
        compensate: SparseGPT: the kept weights of each layer also make up for the error of
            the layers pruned before it (its target is the unpruned model's output, not its
            own output on pruned inputs); costs a second pass per block on the unpruned
            weights. ``False`` is the paper's sequential scheme.
        inplace: modify ``model``; if ``False``, prune a copy (``report.model``).
        progress: show a progress bar over the blocks.

    Returns:
        A :class:`~keras_prune.PruningReport`. ``report.warnings`` names weights pruned by
        magnitude because they are not a plain linear kernel (Embedding, grouped or transposed
        convolutions, RNN kernels) or were never called on the calibration data, N:M
        patterns that do not fit, Hessians dampened more than asked, and layers that saw
        fewer calibration rows than they have inputs.

    Raises:
        ValueError, TypeError: bad arguments, calibration data the model does not accept, or
            NaN/infinite weights or activations. The model is unchanged after any error.

    Example:
        >>> model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(8, activation="relu"),
        ...                           keras.layers.Dense(4)])
        >>> x = np.random.default_rng(0).normal(size=(64, 16)).astype("float32")
        >>> report = oneshot_prune(model, x, method="sparsegpt", sparsity=0.5)
        >>> round(report.totals["sparsity"], 2), report.settings["samples"]
        (0.5, 64)
    """
    check_choice("method", method, METHODS)
    if method == "magnitude":
        return magnitude_prune(model, sparsity=sparsity, scope=scope, layers=layers,
                               sparsity_m_by_n=sparsity_m_by_n, inplace=inplace)
    settings = check_arguments(sparsity, None, scope, layers, (1, 1), sparsity_m_by_n)
    criterion = _criterion(method, damping, block_columns)
    batches = calibration_batches(calibration_data, samples, batch_size)
    if not inplace:
        model = copy_model(model)
    work = _plan(model, settings)
    notes = work.notes + _probe(model, work, batches[0])
    changes = _Changes()
    paired = compensate and isinstance(criterion, SparseGPT)
    stacks: dict[int, LayerStack | None] = {}
    try:
        for target in work.targets:  # first, so the calibrated blocks see them pruned
            if not target.calibrated:
                values = keras.ops.convert_to_numpy(target.variable)
                changes.assign(target.variable, values, zero_pruned(values, target.fallback))
        for block in track(_blocks(model, work), description="Calibrating", disable=not progress,
                           transient=True):
            runner = _stack_runner(model, block, batches, stacks, changes if paired else None)
            notes += _prune_block(model, block.targets, criterion, batches, changes, work.m_by_n, runner, paired)
            if runner is not None:
                runner.advance()
    except BaseException:
        changes.restore()
        raise
    used = sum(batch_length(batch) for batch in batches)
    return _report(model, settings, method, used, damping, work, notes, layers)


class _Changes:
    """The weights changed so far, with their values before and after: to undo the changes
    after an error, or to run the unpruned model for a moment (:meth:`unpruned`)."""

    def __init__(self):
        self.before: dict[int, tuple] = {}
        self.after: dict[int, tuple] = {}

    def assign(self, variable, values: np.ndarray, new: np.ndarray) -> None:
        self.before.setdefault(id(variable), (variable, values))
        variable.assign(new)
        self.after[id(variable)] = (variable, new)

    def restore(self) -> None:
        for variable, values in self.before.values():
            variable.assign(values)

    @contextlib.contextmanager
    def unpruned(self):
        self.restore()
        try:
            yield
        finally:
            for variable, values in self.after.values():
                variable.assign(values)


def _criterion(method: str, damping: float, block_columns: int) -> Criterion:
    if isinstance(damping, bool) or not isinstance(damping, (int, float)) or not (
            math.isfinite(damping) and damping > 0):
        raise ValueError(f"Argument `damping` must be a finite number > 0. Received: damping={damping!r}")
    check_int("block_columns", block_columns, 1)
    return {"wanda": Wanda(), "sparsegpt": SparseGPT(float(damping), block_columns)}[method]


class _Target:
    """One selected weight: its layer path, view, magnitude plan and call order."""

    def __init__(self, path: str, variable, view: LinearView | None, fallback: np.ndarray, m_by_n_ok: bool):
        self.path, self.variable, self.view, self.fallback = path, variable, view, fallback
        self.count = int(np.size(fallback) - np.count_nonzero(fallback))
        self.m_by_n_ok = m_by_n_ok
        self.calls, self.first = 0, -1

    @property
    def calibrated(self) -> bool:
        """Pruned by the method (else by magnitude): a linear kernel, called, its N:M groups aligned."""
        return self.view is not None and self.calls > 0 and self.m_by_n_ok


class _Work:
    def __init__(self, targets: list[_Target], m_by_n, notes: list[LayerWarning]):
        self.targets, self.m_by_n, self.notes = targets, m_by_n, notes


def _plan(model: keras.Model, settings: dict) -> _Work:
    """The magnitude plan (exact counts, global ranking, checks), and each weight's linear view."""
    m_by_n = settings["sparsity_m_by_n"]
    selected = select_weights(model, settings["layer_filter"], settings["sparsity"])
    axes = input_axes(model, [variable for _, variable in selected])
    notes = pattern_warnings(selected, (1, 1), m_by_n, axes=axes)
    plan = plan_masks(model, **{k: settings[k] for k in ("sparsity", "scope", "layer_filter", "sparsity_m_by_n")})
    views = weight_views(model, [variable for _, variable in selected])
    targets = []
    for (path, variable), axis, view, (_, keep) in zip(selected, axes, views, plan.values()):
        fits = m_by_n is None or view is None or _groups_align(view, variable, axis, m_by_n[1])
        targets.append(_Target(path, variable, view, keep, fits))
        if view is None:
            notes.append(LayerWarning(path, f"{weight_name(variable)} is not a plain linear kernel; pruned by magnitude"))
        elif not fits:
            notes.append(LayerWarning(path, f"{weight_name(variable)}: N:M groups along its input axis are not "
                                            "consecutive features; pruned by magnitude"))
    return _Work(targets, m_by_n, notes)


def _groups_align(view: LinearView, variable, axis: int, n: int) -> bool:
    """Whether N:M groups along the input ``axis`` are runs of ``n`` consecutive view features
    (the input axis varies fastest among them, so it needs no ragged group unless it is alone)."""
    length = tuple(variable.shape)[axis]
    return length == view.size or length % n == 0


def _probe(model: keras.Model, work: _Work, batch) -> list[LayerWarning]:
    """Runs one batch to check the data fits and learn the order and count of calls."""
    viewed = [t for t in work.targets if t.view is not None]
    layers = list({id(t.view.layer): t.view.layer for t in viewed}.values())
    try:
        order = dict(zip([id(layer) for layer in layers], call_order(model, layers, batch)))
    except (ValueError, TypeError, KeyError) as error:
        raise ValueError(
            f"Argument `calibration_data` does not fit model '{model.name}': calling the model on its "
            f"first batch raised {type(error).__name__}: {error}"
        ) from None
    notes = []
    for target in viewed:
        target.calls, target.first = order[id(target.view.layer)]
        if not target.calls:
            notes.append(LayerWarning(target.path, "not called on the calibration data; pruned by magnitude"))
    return notes


class _Block:
    """Targets pruned together: a transformer layer's (``stack[index]``), or one layer's."""

    def __init__(self, stack: list | None, index: int):
        self.stack, self.index, self.targets = stack, index, []


def _blocks(model: keras.Model, work: _Work) -> list[_Block]:
    """Calibrated targets grouped into blocks, in call order."""
    groups: dict[int, _Block] = {}
    stacks = _transformer_stacks(model)
    for target in work.targets:
        if not target.calibrated:
            continue
        place = next(((stack, i) for stack, i, inside in stacks if id(target.view.layer) in inside), None)
        key = id(place[0][place[1]]) if place else id(target.view.layer)
        groups.setdefault(key, _Block(*place) if place else _Block(None, 0)).targets.append(target)
    return sorted(groups.values(), key=lambda block: min(t.first for t in block.targets))


def _transformer_stacks(model: keras.Model) -> list[tuple[list, int, set[int]]]:
    """``(stack, index, ids inside)`` for each layer of a ``transformer_layers`` list (KerasHub)."""
    found = []
    for layer in all_layers(model):
        stack = getattr(layer, "transformer_layers", None)
        if isinstance(stack, (list, tuple)) and all(isinstance(b, keras.layers.Layer) for b in stack):
            found += [(list(stack), i, {id(inner) for inner in all_layers(block)}) for i, block in enumerate(stack)]
    return found


def _stack_runner(model, block: _Block, batches, stacks: dict, changes: _Changes | None) -> LayerStack | None:
    """The held inputs of ``block``'s transformer layer, or ``None`` to use whole forward passes.
    With ``changes``, also those the unpruned model gives it."""
    if block.stack is None:
        return None
    key = id(block.stack[0])
    if key not in stacks:
        stacks[key] = LayerStack.capture(model, block.stack, block.index, batches,
                                         unpruned=changes.unpruned if changes is not None else None)
    runner = stacks[key]
    if runner is not None:
        runner.advance(to=block.index)
    return runner


def _prune_block(model, block: list[_Target], criterion: Criterion, batches, changes: _Changes,
                 m_by_n: tuple[int, int] | None, runner: LayerStack | None, paired: bool) -> list[LayerWarning]:
    """Collects the block's input statistics on ``batches`` (through ``runner`` when there is
    one; ``paired``: with the inputs the unpruned model gives it), then prunes its weights."""
    gram = criterion.statistics == "gram"
    statistics = {}
    for target in block:
        statistics[id(target.view.layer)] = (target.view, InputStatistics(target.view.size, gram=gram))
    stop_after = {id(t.view.layer): t.calls for t in block}
    try:
        paired = paired and bool(changes.before)  # nothing pruned yet: the inputs are the unpruned ones
        if runner is not None:
            with recording(statistics, paired=paired) as recorder:
                runner.run(recorder)
        else:
            with recording(statistics, stop_after, paired=paired) as recorder:
                forward(model, batches, recorder, changes.unpruned if paired else None)
    except ValueError as error:
        raise ValueError(f"Calibration stopped before any weight changed: {error}") from None
    notes = []
    samples = sum(batch_length(batch) for batch in batches)
    for target in block:
        stats = statistics[id(target.view.layer)][1]
        values = keras.ops.convert_to_numpy(target.variable)
        result = criterion.prune(target.view.to_matrix(values), stats, target.count, m_by_n)
        changes.assign(target.variable, values, target.view.from_matrix(result.matrix).astype(values.dtype))
        if result.note:
            notes.append(LayerWarning(target.path, result.note))
        if gram and stats.rows < target.view.size:
            needed = math.ceil(target.view.size * samples / stats.rows)
            notes.append(LayerWarning(target.path, (
                f"saw {stats.rows} calibration rows for {target.view.size} inputs, so its Hessian is "
                f"rank-deficient (dampened); {needed} samples would give it full rank")))
    return notes


def _report(model, settings, method, used, damping, work, notes, layers) -> PruningReport:
    settings = dict(settings, method=method, samples=used,
                    layers=sorted({t.path for t in work.targets}))
    if method == "sparsegpt":
        settings["damping"] = float(damping)
    if callable(layers):
        settings["layer_filter"] = getattr(layers, "__name__", "callable")
    report = summarize(model, settings=settings)
    report.warnings = notes
    return report


def input_statistics(
    model: keras.Model,
    calibration_data: object,
    *,
    layers: LayerFilter = None,
    samples: int = 128,
    batch_size: int = 32,
    gram: bool = False,
) -> dict[str, InputStatistics]:
    """What each selected linear kernel's inputs look like on the calibration data, unpruned.

    One pass over the data collects, for every Dense/EinsumDense/Conv kernel at any depth,
    the sum of squares of each input feature (and with ``gram=True`` the ``X^T X`` matrix):
    the statistics Wanda and SparseGPT prune by, for analysis or a criterion of your own.

    Returns:
        ``{"layer path/weight name": InputStatistics}`` for the selected kernels that have a linear view
        and are called on the data.

    Example:
        >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="d")])
        >>> stats = input_statistics(model, np.ones((5, 3), "float32"))
        >>> stats["d/kernel"].rows, stats["d/kernel"].norms.round(3).tolist()
        (5, [2.236, 2.236, 2.236])
    """
    named = statistics_by_weight(model, calibration_data, layers=layers, samples=samples,
                                 batch_size=batch_size, gram=gram)
    return {weight_key(path, view.variable): stats for path, view, stats in named.values()}


def statistics_by_weight(model: keras.Model, calibration_data: object, *, layers: LayerFilter = None,
                         samples: int = 128, batch_size: int = 32, gram: bool = False) -> dict:
    """:func:`input_statistics` as ``{id(kernel): (layer path, LinearView, InputStatistics)}``."""
    batches = calibration_batches(calibration_data, samples, batch_size)
    selected = select_weights(model, layers)
    views = weight_views(model, [variable for _, variable in selected])
    statistics = {id(view.layer): (path, view, InputStatistics(view.size, gram=gram))
                  for (path, _), view in zip(selected, views) if view is not None}
    with recording({key: (view, stats) for key, (_, view, stats) in statistics.items()}) as recorder:
        forward(model, batches, recorder)
    return {id(view.variable): (path, view, stats) for path, view, stats in statistics.values() if stats.rows}
