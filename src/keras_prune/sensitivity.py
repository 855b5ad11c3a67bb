"""Sensitivity analysis: how much a metric suffers when one weight alone is pruned, per sparsity.

:func:`sensitivity` prunes each prunable weight of a model by itself, one-shot, at each of a
few sparsities, measures the metric on a fixed sample (an
:class:`~keras_prune.evaluation.Evaluator`) and puts the weight back exactly. The
:class:`SensitivityResult` holds one curve per weight: its drops, areas (:meth:`~SensitivityResult.score`),
a table, a plot and a JSON form.

Only one weight is pruned at a time, so every layer sees the inputs of the unpruned model:
for Wanda and SparseGPT one calibration pass on that model serves every weight.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import keras
import numpy as np
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from keras_prune._validation import check_choice, check_int
from keras_prune.calibrated import METHODS, statistics_by_weight
from keras_prune.criteria import Criterion, SparseGPT, Wanda, magnitude
from keras_prune.evaluation import Evaluator, MetricSpec
from keras_prune.io import atomic_write
from keras_prune.linear_views import weight_views
from keras_prune.masks import prune_count, sparsity_mask, zero_pruned
from keras_prune.oneshot import LayerFilter, select_weights, weight_keys, weight_name

DEFAULT_SPARSITIES = (0.25, 0.5, 0.7, 0.8, 0.9, 0.95)
FORMAT = "keras-prune-sensitivity"
# Up to this many weights, the plot draws one curve each; beyond, a heat map.
MAX_CURVES = 12


def sensitivity(
    model: keras.Model,
    data: object,
    *,
    sparsities: Sequence[float] = DEFAULT_SPARSITIES,
    method: str = "magnitude",
    metric: MetricSpec = None,
    layers: LayerFilter = None,
    samples: int = 1024,
    calibration_samples: int = 128,
    batch_size: int = 64,
    calibration_data: object = None,
    progress: bool = True,
    higher_is_better: bool | None = None,
) -> SensitivityResult:
    """Measures ``metric`` with each prunable weight pruned alone at each sparsity.

    Args:
        model: a built Keras model (compiled, unless ``metric`` is a callable or metric object).
        data: labelled evaluation data, as :class:`~keras_prune.evaluation.Evaluator` takes it.
        sparsities: the sparsities to measure, increasing, each in (0, 1).
        method: how each weight is pruned: ``"magnitude"`` (smallest ``|w|``), ``"wanda"`` or
            ``"sparsegpt"`` (see :func:`~keras_prune.oneshot_prune`). Calibrated methods prune
            weights that are not plain linear kernels, or not called on the calibration data,
            by magnitude and say so in ``result.notes``.
        metric: what to measure: see :class:`~keras_prune.evaluation.Evaluator`.
        layers: which layers to analyse, as in :func:`~keras_prune.magnitude_prune`.
        samples: how many examples of ``data`` to evaluate on.
        calibration_samples: how many calibration examples Wanda and SparseGPT use.
        batch_size: batch size for predictions and calibration.
        calibration_data: Wanda's and SparseGPT's calibration inputs (as
            :func:`~keras_prune.oneshot_prune` takes them); by default the ``x`` of ``data``.
        progress: show a progress bar with the time remaining.
        higher_is_better: whether a callable ``metric`` rises as the model gets better (a loss
            does not); see :class:`~keras_prune.evaluation.Evaluator`.

    Returns:
        A :class:`SensitivityResult`, its weights named by :func:`~keras_prune.oneshot.weight_key`
        (``"layer path/weight name"``, as per-weight sparsities take them).

    Raises:
        ValueError, TypeError: bad arguments, a selection with nothing to prune, data the
            model or metric does not accept, or NaN/infinite weights; all before any weight
            changes. Whatever happens, the model's weights end exactly as they were.

    Example:
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d")])
        >>> model.compile(loss="mse", metrics=["mae"])
        >>> x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
        >>> y = model.predict(x, verbose=0)  # the targets the unpruned model hits exactly
        >>> result = sensitivity(model, (x, y), sparsities=(0.5, 0.9), progress=False)
        >>> result.metric, result.higher_is_better, result.keys, result.sizes
        ('mae', False, ['d/kernel'], {'d/kernel': 12})
        >>> result.baseline, result.drop("d/kernel", 0.0), result.score("d/kernel") > 0
        (0.0, 0.0, True)
    """
    levels = check_sparsities(sparsities)
    check_choice("method", method, METHODS)
    check_int("calibration_samples", calibration_samples, 1)
    if method == "magnitude" and calibration_data is not None:
        raise ValueError("Argument `calibration_data` is for method='wanda' or 'sparsegpt'; magnitude pruning "
                         f"looks at the weights alone. Received: method={method!r} with calibration_data")
    targets = _targets(select_weights(model, layers))
    evaluator = Evaluator(model, data, metric=metric, samples=samples, batch_size=batch_size,
                          higher_is_better=higher_is_better)
    notes = _calibrate(model, targets, method, layers, calibration_data, evaluator, calibration_samples, batch_size)
    baseline = evaluator()
    curves = _measure(evaluator, targets, levels, progress)
    return SensitivityResult(
        metric=evaluator.name, higher_is_better=evaluator.higher_is_better, method=method,
        baseline=baseline, sparsities=levels, curves=curves,
        sizes={t.key: int(t.values.size) for t in targets}, notes=notes,
    )


def check_sparsities(sparsities: object) -> tuple[float, ...]:
    """Returns ``sparsities`` as a tuple of floats if they are increasing and each in (0, 1).

    Example:
        >>> check_sparsities([0.5, 0.9])
        (0.5, 0.9)
    """
    if isinstance(sparsities, (str, bytes)) or not isinstance(sparsities, Sequence) or not sparsities:
        raise TypeError(f"Argument `sparsities` must be a non-empty list of numbers in (0, 1). "
                        f"Received: sparsities={sparsities!r}")
    for value in sparsities:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                math.isfinite(value) and 0.0 < value < 1.0):
            raise ValueError(f"Argument `sparsities` must hold numbers in (0, 1). Received: sparsities={sparsities!r}")
    if any(b <= a for a, b in zip(sparsities, sparsities[1:])):
        raise ValueError(f"Argument `sparsities` must be increasing, without repeats. "
                         f"Received: sparsities={sparsities!r}")
    return tuple(float(value) for value in sparsities)


class _Target:
    """One weight under analysis: its key, variable, original values and how to prune it."""

    def __init__(self, key: str, variable, values: np.ndarray):
        self.key, self.variable, self.values = key, variable, values
        self.prune: Callable[[float], np.ndarray] = self._by_magnitude

    def _by_magnitude(self, sparsity: float) -> np.ndarray:
        return zero_pruned(self.values, sparsity_mask(magnitude(self.values), sparsity))


def _targets(selected: list[tuple[str, object]]) -> list[_Target]:
    """A :class:`_Target` per selected weight, its values copied; raises on NaN or infinite values."""
    targets = []
    for key, (_, variable) in zip(weight_keys(selected), selected):
        values = np.array(keras.ops.convert_to_numpy(variable), copy=True)
        if not np.all(np.isfinite(values)):
            raise ValueError(f"Weight '{key}' contains NaN or infinite values, so it cannot be ranked for "
                             "pruning. Fix or retrain the model first.")
        targets.append(_Target(key, variable, values))
    return targets


def _calibrate(model, targets: list[_Target], method: str, layers: LayerFilter, calibration_data,
               evaluator: Evaluator, samples: int, batch_size: int) -> dict[str, str]:
    """Gives each calibrated target its pruning by ``method``; returns notes on the others."""
    if method == "magnitude":
        return {}
    data = evaluator.inputs if calibration_data is None else calibration_data
    try:
        found = statistics_by_weight(model, data, layers=layers, samples=samples, batch_size=batch_size,
                                     gram=method == "sparsegpt")
    except Exception as error:
        raise ValueError(f"Argument `calibration_data` does not fit model '{model.name}': calibrating on it "
                         f"raised {type(error).__name__}: {error}") from error
    criterion = _SparseGPT() if method == "sparsegpt" else Wanda()
    views = weight_views(model, [t.variable for t in targets])
    notes = {}
    for target, view in zip(targets, views):
        if id(target.variable) in found:
            _, view, stats = found[id(target.variable)]
            target.prune = _calibrated(target, view, stats, criterion, notes)
            if method == "sparsegpt" and stats.rows < view.size:
                _note(notes, target.key, f"saw {stats.rows} calibration rows for {view.size} inputs, so its Hessian "
                                         "is rank-deficient (dampened); more calibration samples give it full rank")
        elif view is None:
            notes[target.key] = f"{weight_name(target.variable)} is not a plain linear kernel; pruned by magnitude"
        else:
            notes[target.key] = "not called on the calibration data; pruned by magnitude"
    return notes


class _SparseGPT(SparseGPT):
    """SparseGPT reusing the inverse Hessian factor of the last statistics it saw: every
    sparsity of one weight needs the same factor, and it is the costly part."""

    def __init__(self):
        super().__init__()
        self._last: tuple = (None, None)

    def _inverse_factor(self, gram):
        if self._last[0] is not gram:
            self._last = (gram, super()._inverse_factor(gram))
        return self._last[1]


def _calibrated(target: _Target, view, stats, criterion: Criterion, notes: dict) -> Callable[[float], np.ndarray]:
    def prune(sparsity: float) -> np.ndarray:
        result = criterion.prune(view.to_matrix(target.values), stats, prune_count(sparsity, target.values.size))
        if result.note:
            _note(notes, target.key, result.note)
        return view.from_matrix(result.matrix).astype(target.values.dtype)

    return prune


def _note(notes: dict[str, str], key: str, text: str) -> None:
    """Adds ``text`` to the note on ``key``, once."""
    if text not in notes.get(key, ""):
        notes[key] = f"{notes[key]}; {text}" if key in notes else text


def _measure(evaluator: Evaluator, targets: list[_Target], levels: tuple[float, ...],
             progress: bool) -> dict[str, list[float]]:
    """The metric with each target pruned alone at each sparsity, the target restored after each."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    curves = {}
    with Progress(*columns, disable=not progress, transient=True) as bar:
        task = bar.add_task("Sensitivity", total=len(targets) * len(levels))
        for target in targets:
            bar.update(task, description=f"Sensitivity {target.key}")
            curves[target.key] = []
            for sparsity in levels:
                curves[target.key].append(_pruned_metric(evaluator, target, sparsity))
                bar.advance(task)
    return curves


def _pruned_metric(evaluator: Evaluator, target: _Target, sparsity: float) -> float:
    """The metric with ``target`` pruned to ``sparsity``; its values are put back whatever happens."""
    pruned = target.prune(sparsity)
    try:
        target.variable.assign(pruned)
        return evaluator()
    finally:
        target.variable.assign(target.values)


@dataclasses.dataclass
class SensitivityResult:
    """What :func:`sensitivity` measured.

    Attributes:
        metric: the metric's name.
        higher_is_better: whether a larger metric is better.
        method: how each weight was pruned.
        baseline: the metric of the unpruned model.
        sparsities: the sparsities measured, increasing.
        curves: ``{key: metric at each sparsity}``, keys in model order.
        sizes: ``{key: number of weights}``.
        notes: ``{key: note}`` for weights pruned otherwise than ``method`` says.

    Example:
        >>> result = SensitivityResult("accuracy", True, "magnitude", 0.9, (0.5, 0.9),
        ...                            {"a/kernel": [0.9, 0.5], "b/kernel": [0.8, 0.7]}, {"a/kernel": 10, "b/kernel": 4})
        >>> round(result.drop("a/kernel", 0.7), 3), round(result.score("a/kernel"), 3), round(result.score("b/kernel"), 3)
        (0.2, 0.08, 0.085)
        >>> SensitivityResult.from_json(result.to_json()) == result
        True
    """

    metric: str
    higher_is_better: bool
    method: str
    baseline: float
    sparsities: tuple[float, ...]
    curves: dict[str, list[float]]
    sizes: dict[str, int]
    notes: dict[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.sparsities = check_sparsities(list(self.sparsities))
        self.curves = {str(k): [float(v) for v in values] for k, values in self.curves.items()}
        self.sizes = {str(k): int(v) for k, v in self.sizes.items()}
        for key, values in self.curves.items():
            if len(values) != len(self.sparsities) or key not in self.sizes:
                raise ValueError(f"The curve of '{key}' needs one value per sparsity ({len(self.sparsities)}) and "
                                 f"a size. Received: {len(values)} values, size={self.sizes.get(key)!r}")

    @property
    def keys(self) -> list[str]:
        """The weights' keys, in model order."""
        return list(self.curves)

    def drop(self, key: str, sparsity: float) -> float:
        """How much worse the metric is with weight ``key`` pruned to ``sparsity`` (positive: worse),
        linear between the sparsities measured, and 0 at sparsity 0."""
        xs, ys = self._drops(key)
        if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity <= xs[-1]:
            raise ValueError(f"Argument `sparsity` must be a number in [0, {xs[-1]:g}], the sparsities measured. "
                             f"Received: sparsity={sparsity!r}")
        return float(np.interp(float(sparsity), xs, ys))

    def score(self, key: str) -> float:
        """The area under the drop curve of weight ``key`` from sparsity 0 to the largest
        measured: higher means more sensitive."""
        xs, ys = self._drops(key)
        return float(sum((b - a) * (c + d) / 2 for a, b, c, d in zip(xs, xs[1:], ys, ys[1:])))

    def _drops(self, key: str) -> tuple[list[float], list[float]]:
        if key not in self.curves:
            raise ValueError(f"Argument `key` must be one of the weights analysed ({', '.join(self.keys[:8])}"
                             f"{', ...' if len(self.keys) > 8 else ''}). Received: key={key!r}")
        sign = 1.0 if self.higher_is_better else -1.0
        return [0.0, *self.sparsities], [0.0, *(sign * (self.baseline - v) for v in self.curves[key])]

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """The result as JSON text; with ``path``, also written there (atomically)."""
        text = json.dumps({"format": FORMAT, "version": 1, **dataclasses.asdict(self)}, indent=1)
        if path is not None:
            atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        return text

    @classmethod
    def from_json(cls, text_or_path: str | os.PathLike) -> SensitivityResult:
        """A result from :meth:`to_json`'s text, or from the file it wrote."""
        text = text_or_path
        if isinstance(text, os.PathLike) or (isinstance(text, str) and not text.lstrip().startswith("{")):
            text = Path(text).read_text(encoding="utf-8")
        try:
            fields = json.loads(text)
        except (TypeError, json.JSONDecodeError) as error:
            raise ValueError(f"Not a sensitivity result: {error}. Received: {str(text_or_path)[:80]!r}") from None
        if not isinstance(fields, dict) or fields.pop("format", None) != FORMAT or fields.pop("version", None) != 1:
            raise ValueError(f"Not a sensitivity result (format '{FORMAT}', version 1). "
                             f"Received: {str(text_or_path)[:80]!r}")
        return cls(**{field.name: fields[field.name] for field in dataclasses.fields(cls) if field.name in fields})

    def table(self):
        """A ``rich`` table: each weight's key, size, score and metric at each sparsity."""
        from rich.table import Table

        table = Table(title=f"Sensitivity of {self.metric} ({self.method}); unpruned: {self.baseline:.4g}",
                      caption="score: area under the drop curve, higher is more sensitive")
        table.add_column("weight")
        table.add_column("weights", justify="right")
        table.add_column("score", justify="right")
        for sparsity in self.sparsities:
            table.add_column(f"{100 * sparsity:g}%", justify="right")
        for key in self.keys:
            table.add_row(key, f"{self.sizes[key]:,}", f"{self.score(key):.4g}",
                          *(f"{value:.4g}" for value in self.curves[key]))
        return table

    def plot(self, path: str | os.PathLike) -> str:
        """Writes a PNG to ``path``: the metric against sparsity, one curve per weight, or with
        more than 12 weights a heat map of the drops (weights by sparsities)."""
        from matplotlib.figure import Figure

        many = len(self.keys) > MAX_CURVES
        size = (10, max(3.5, 0.17 * len(self.keys) + 1.5)) if many else (10, 5)
        fig = Figure(figsize=size, layout="constrained")
        (self._heat_map if many else self._curves)(fig, fig.add_subplot())
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
        return str(path)

    def _curves(self, fig, ax) -> None:
        xs = [100 * s for s in self.sparsities]
        for i, key in enumerate(self.keys):  # past the 10 colours of the cycle, dashed
            ax.plot(xs, self.curves[key], marker="o", markersize=3, linestyle="-" if i < 10 else "--", label=key)
        ax.axhline(self.baseline, color="gray", linestyle="--", label="unpruned")
        ax.set_xlabel("sparsity of the one weight pruned (%)")
        ax.set_ylabel(self.metric)
        ax.set_title(f"{self.metric} with each weight pruned alone ({self.method})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))

    def _heat_map(self, fig, ax) -> None:
        drops = np.array([[self.drop(key, s) for s in self.sparsities] for key in self.keys])
        finite = np.abs(drops[np.isfinite(drops)])
        limit = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
        image = ax.imshow(drops, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
        ax.set_xticks(range(len(self.sparsities)), [f"{100 * s:g}%" for s in self.sparsities])
        ax.set_yticks(range(len(self.keys)), self.keys, fontsize=6 if len(self.keys) > 40 else 8)
        ax.set_xlabel("sparsity of the one weight pruned")
        ax.set_title(f"Drop in {self.metric} with each weight pruned alone ({self.method}; red: worse)")
        fig.colorbar(image, ax=ax, label=f"drop in {self.metric}", fraction=0.04)
