"""Budget search: the highest overall sparsity whose metric stays within a given drop.

:func:`prune_to_budget` bisects on the overall sparsity. Each probe restores the dense
weights, allocates per-weight sparsities by a rule (:func:`keras_prune.allocate`), prunes
one-shot by the chosen method (:func:`keras_prune.oneshot_prune`) and evaluates on a
bounded sample (:class:`keras_prune.evaluation.Evaluator`). The model ends pruned at the best
probe within the budget; the report lists every probe.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from rich.progress import Progress

from keras_prune._validation import check_choice
from keras_prune.allocation import RULES, UnreachableTarget, allocate
from keras_prune.analysis.report import PruningReport
from keras_prune.calibrated import METHODS, oneshot_prune
from keras_prune.evaluation import Evaluator
from keras_prune.oneshot import LayerFilter, copy_model, select_weights


def prune_to_budget(
    model: keras.Model,
    data: object,
    *,
    max_drop: float,
    metric: object = None,
    method: str = "magnitude",
    rule: str = "global",
    calibration_data: object = None,
    sensitivity: object = None,
    layers: LayerFilter = None,
    low: float = 0.0,
    high: float = 0.99,
    tolerance: float = 0.01,
    samples: int | None = 1024,
    calibration_samples: int = 128,
    batch_size: int = 64,
    inplace: bool = True,
    progress: bool = False,
    higher_is_better: bool | None = None,
) -> PruningReport:
    """Prunes ``model`` one-shot to the highest overall sparsity within ``max_drop`` of its metric.

    Bisection on the overall sparsity between ``low`` and ``high``, until the bracket is at
    most ``tolerance`` wide: every probe allocates per-weight sparsities by ``rule``, prunes
    the dense weights by ``method`` and measures the metric on ``data`` (at most ``samples``
    examples). It assumes the metric worsens as sparsity grows; the report shows each probe.

    Args:
        model: a built model; compiled, unless ``metric`` is a callable.
        data: evaluation data, ``(x, y)`` arrays or a dataset of ``(x, y)`` batches.
        max_drop: the largest allowed worsening of the metric, in its own units (``0.01`` is
            one point of accuracy; for a loss, the allowed increase).
        metric: a compiled metric's name, ``"loss"``, a callable ``(y_true, y_pred) -> float``,
            or ``None`` for the first compiled metric.
        method: ``"magnitude"``, ``"wanda"`` or ``"sparsegpt"``.
        rule: how the overall sparsity is spread over the weights (see :func:`keras_prune.allocate`).
        calibration_data: inputs for the calibrated methods and the ``"owl"`` rule; default the
            ``x`` of ``data``.
        sensitivity: a :func:`keras_prune.sensitivity` result, for ``rule="sensitivity"``
            (computed here with ``method`` if not given).
        layers: which layers to prune, as in :func:`keras_prune.magnitude_prune`.
        low, high: the bracket of overall sparsities searched.
        tolerance: stop when the bracket is this narrow.
        samples: evaluation examples; calibration_samples: calibration examples.
        batch_size: evaluation and calibration batch size.
        inplace: modify ``model``; if ``False``, prune a copy (``report.model``).
        progress: show a progress display.
        higher_is_better: whether a callable ``metric`` rises as the model gets better.

    Returns:
        The :class:`~keras_prune.PruningReport` of the pruned model. ``report.history`` lists
        the probes (``sparsity``, ``metric``, ``drop``, ``within``) in the order tried, and
        ``report.settings`` the dense metric and the sparsity reached.

    Raises:
        ValueError, TypeError: bad arguments, data that does not fit, a metric the model does
            not compute; raised before any weight changes. The model is unchanged after an error.

    Example:
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
        >>> model.compile(loss="mse", metrics=["mae"])
        >>> x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
        >>> report = prune_to_budget(model, (x, x @ np.ones((8, 3), "float32")), max_drop=0.5, metric="loss")
        >>> [sorted(probe) for probe in report.history][0]
        ['drop', 'metric', 'sparsity', 'within']
    """
    _check_search(max_drop, low, high, tolerance)
    check_choice("method", method, METHODS)
    check_choice("rule", rule, RULES)
    evaluator = Evaluator(model, data, metric=metric, samples=samples, batch_size=batch_size,
                          higher_is_better=higher_is_better)
    if calibration_data is None:
        calibration_data = evaluator.inputs
    if rule == "sensitivity" and sensitivity is None:
        from keras_prune.sensitivity import sensitivity as analyze

        sensitivity = analyze(model, data, method=method, metric=metric, layers=layers, samples=samples,
                              calibration_data=None if method == "magnitude" else calibration_data,
                              calibration_samples=calibration_samples,
                              batch_size=batch_size, progress=progress, higher_is_better=higher_is_better)
    if not inplace:
        model = copy_model(model)
    search = _Search(model, evaluator, max_drop, dict(
        method=method, rule=rule, calibration_data=calibration_data, sensitivity=sensitivity, layers=layers,
        calibration_samples=calibration_samples, batch_size=batch_size))
    try:
        best = search.run(low, high, tolerance, progress)
    except BaseException:
        search.restore()
        raise
    report = search.final(best)
    report.settings.update(
        method=method, rule=rule, metric=evaluator.name, max_drop=float(max_drop), dense_metric=search.baseline,
        reached_sparsity=best, tolerance=float(tolerance), evaluation_samples=evaluator.samples,
    )
    return report


def _check_search(max_drop, low, high, tolerance) -> None:
    for name, value in (("max_drop", max_drop), ("low", low), ("high", high), ("tolerance", tolerance)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise TypeError(f"Argument `{name}` must be a finite number. Received: {name}={value!r}")
    if max_drop < 0:
        raise ValueError(
            "Argument `max_drop` is how much the metric may worsen, so it must be >= 0 (the dense model "
            f"itself is at a drop of 0). Received: max_drop={max_drop!r}"
        )
    if not 0.0 <= low < high < 1.0:
        raise ValueError(f"Arguments `low` and `high` must satisfy 0 <= low < high < 1. Received: low={low!r}, "
                         f"high={high!r}")
    if not 0.0 < tolerance < high - low + 1e-12:
        raise ValueError(f"Argument `tolerance` must be in (0, high - low]. Received: tolerance={tolerance!r}")


class _Search:
    """The bisection's state: the dense weights to start every probe from, and the probes."""

    def __init__(self, model: keras.Model, evaluator: Evaluator, max_drop: float, options: dict):
        self.model, self.evaluator, self.max_drop, self.options = model, evaluator, float(max_drop), options
        self.variables = [variable for _, variable in select_weights(model, options["layers"])]
        self.dense = [np.array(keras.ops.convert_to_numpy(v)) for v in self.variables]
        self.baseline = evaluator(model)
        self.history: list[dict] = []
        self.report: PruningReport | None = None
        self.last: float | None = None  # the sparsity the model is pruned to now

    def restore(self) -> None:
        for variable, values in zip(self.variables, self.dense):
            variable.assign(values)

    def probe(self, sparsity: float) -> bool:
        """Prunes the dense weights to ``sparsity`` overall, measures, records; True if within budget."""
        self.restore()
        self.last = sparsity
        options = self.options
        allocation = allocate(self.model, sparsity, rule=options["rule"], layers=options["layers"],
                              calibration_data=options["calibration_data"], sensitivity=options["sensitivity"],
                              samples=options["calibration_samples"], batch_size=options["batch_size"])
        self.report = oneshot_prune(
            self.model, options["calibration_data"], method=options["method"], sparsity=dict(allocation),
            samples=options["calibration_samples"], batch_size=options["batch_size"])
        value = self.evaluator(self.model)
        drop = self.evaluator.drop(self.baseline, value)
        within = bool(drop <= self.max_drop)
        self.history.append({"sparsity": float(allocation.overall), "metric": value, "drop": drop, "within": within})
        return within

    def run(self, low: float, high: float, tolerance: float, progress: bool) -> float:
        """The highest probed sparsity within budget (``low`` if none above it is)."""
        steps = max(1, math.ceil(math.log2((high - low) / tolerance))) + 1
        with Progress(transient=True, disable=not progress) as bar:
            task = bar.add_task("Searching the sparsity", total=steps)
            best = low
            try:
                reached = self.probe(high)
            except UnreachableTarget as error:  # the rule caps some weights (max_sparsity, a sweep's end)
                high = min(high, error.highest)
                if high <= low:
                    raise
                reached = self.probe(high)
            if reached:
                bar.advance(task, steps)
                return high
            bar.advance(task)
            while high - low > tolerance:
                middle = (low + high) / 2
                if self.probe(middle):
                    low = best = middle
                else:
                    high = middle
                bar.advance(task)
            return best

    def final(self, best: float) -> PruningReport:
        """The model pruned at ``best`` (dense at 0), with the probes as its history."""
        if best == 0.0:
            self.restore()
            report = _dense_report(self.model)
        else:
            if self.last != best:
                self.probe(best)
                self.history.pop()  # a repeat of an earlier probe, not a new one
            report = self.report
        report.history = list(self.history)
        return report


def _dense_report(model: keras.Model) -> PruningReport:
    from keras_prune.analysis.report import summarize

    return summarize(model, settings={})
