"""How sparse each weight should be: per-weight sparsities that meet an overall target exactly.

:func:`allocate` reads a model (it never changes it) and returns an :class:`Allocation`, a
``{weight key: sparsity}`` mapping that :func:`keras_prune.magnitude_prune` and
:func:`keras_prune.oneshot_prune` accept as ``sparsity=``. A key is the layer path and the weight
name (``"block/ffn/kernel"``); weights of one layer that share a name keep as much of their
variable path as tells them apart (``"block/attention/query/kernel"``), as in sensitivity results.

Each weight ``i`` of ``n_i`` elements gets an integer number of pruned elements ``k_i`` and the
sparsity ``k_i / n_i``, so re-applying it prunes exactly ``k_i``. The rules decide how the
pruning is shared: ``"uniform"`` (the same everywhere), ``"global"`` (one magnitude ranking),
``"erk"`` (Erdős–Rényi-Kernel: small layers stay denser), ``"owl"`` (outlier-weighted: layers
whose inputs have outlier features stay denser) and ``"sensitivity"`` (least predicted loss
from measured per-layer curves).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping

import keras
import numpy as np

from keras_prune._keras_compat import all_layers, built_input_shapes, own_variables
from keras_prune._validation import check_choice, check_int, check_sparsity
from keras_prune.masks import prune_count
from keras_prune.oneshot import LayerFilter, _check_layer_filter, list_paths, select_weights, weight_keys

RULES = ("uniform", "global", "erk", "owl", "sensitivity")
MEASURES = ("weights", "flops")
GRID_STEP = 0.01  # sensitivity curves are read at this spacing of sparsity


class UnreachableTarget(ValueError):
    """The per-weight caps forbid the overall target; :attr:`highest` is the highest reachable one."""

    def __init__(self, highest: float, message: str):
        super().__init__(message)
        self.highest = highest


class Allocation(dict):
    """A read-only ``{weight key: sparsity}`` mapping, with the counts behind each sparsity.

    Attributes:
        rule: the rule that chose it (``"uniform"``, ``"global"``, ``"erk"``, ``"owl"``,
            ``"sensitivity"``, or any label).
        target: the overall sparsity asked for, or ``None``.
        by: ``"weights"`` or ``"flops"``: what the target is a fraction of.
        sizes: ``{key: number of elements}``.
        counts: ``{key: number of elements pruned}``; each sparsity is ``counts[key] / sizes[key]``.
        flops: ``{key: multiply-accumulates per example}`` (see :func:`weight_macs`), or ``None``.

    Example:
        >>> plan = Allocation({"a/kernel": 3, "b/kernel": 1}, {"a/kernel": 4, "b/kernel": 4})
        >>> plan["a/kernel"], plan.overall
        (0.75, 0.5)
        >>> Allocation.from_json(plan.to_json()) == plan
        True
    """

    def __init__(self, counts: Mapping[str, int], sizes: Mapping[str, int], *, rule: str = "custom",
                 target: float | None = None, by: str = "weights", flops: Mapping[str, int] | None = None):
        _check_counts(counts, sizes, flops)
        check_choice("by", by, MEASURES)
        self.rule, self.target, self.by = str(rule), None if target is None else float(target), by
        self.sizes = {key: int(sizes[key]) for key in counts}
        self.counts = {key: int(counts[key]) for key in counts}
        self.flops = None if flops is None else {key: int(flops[key]) for key in counts}
        super().__init__({key: _fraction(self.counts[key], self.sizes[key]) for key in counts})

    @property
    def overall(self) -> float:
        """Pruned elements over all elements of the allocated weights."""
        total = sum(self.sizes.values())
        return sum(self.counts.values()) / total if total else 0.0

    @property
    def flops_sparsity(self) -> float | None:
        """The fraction of the weights' multiply-accumulates pruned, or ``None`` without FLOPs."""
        if self.flops is None or not sum(self.flops.values()):
            return None
        pruned = sum(self.flops[key] * self[key] for key in self)
        return pruned / sum(self.flops.values())

    def for_layers(self) -> dict[str, float]:
        """``{layer path: sparsity}``, the layer's weights pooled (weighted by size); a layer path is a
        key without its weight name.

        Example:
            >>> Allocation({"a/kernel": 1, "a/bias": 3}, {"a/kernel": 4, "a/bias": 4}).for_layers()
            {'a': 0.5}
        """
        pruned: dict[str, int] = {}
        total: dict[str, int] = {}
        for key in self:
            path = key.rsplit("/", 1)[0]
            pruned[path] = pruned.get(path, 0) + self.counts[key]
            total[path] = total.get(path, 0) + self.sizes[key]
        return {path: _fraction(pruned[path], total[path]) for path in pruned}

    def to_dict(self) -> dict:
        """A JSON-ready dict: ``rule``, ``target``, ``by``, ``sparsity``, ``sizes``, ``counts``, ``flops``."""
        return {"rule": self.rule, "target": self.target, "by": self.by, "sparsity": dict(self),
                "sizes": dict(self.sizes), "counts": dict(self.counts),
                "flops": None if self.flops is None else dict(self.flops)}

    def to_json(self, indent: int | None = 2) -> str:
        """The allocation as JSON text (see :meth:`to_dict`)."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> Allocation:
        """The allocation :meth:`to_json` wrote.

        Raises:
            ValueError: the text is not such JSON, or its counts do not give its sparsities.
        """
        try:
            data = json.loads(text)
            plan = cls(data["counts"], data["sizes"], rule=data["rule"], target=data["target"],
                       by=data["by"], flops=data.get("flops"))
        except (TypeError, KeyError, json.JSONDecodeError) as error:
            raise ValueError(f"Not an allocation written by Allocation.to_json ({error!r}). "
                             f"Received: {str(text)[:80]!r}") from None
        if dict(plan) != data.get("sparsity", dict(plan)):
            raise ValueError("The allocation's `sparsity` entries are not its counts over its sizes. "
                             f"Received: {str(text)[:80]!r}")
        return plan

    def table(self, title: str | None = None):
        """A ``rich.table.Table``: one row per weight, then the totals."""
        from rich.table import Table

        title = title or f"Allocation: rule={self.rule}, {self.overall:.1%} of weights pruned"
        table = Table(title=title, show_footer=True, footer_style="bold")
        total, pruned = sum(self.sizes.values()), sum(self.counts.values())
        table.add_column("weight", "total", overflow="fold")
        table.add_column("elements", f"{total:,}", justify="right")
        table.add_column("pruned", f"{pruned:,}", justify="right")
        table.add_column("sparsity", f"{self.overall:.1%}", justify="right")
        if self.flops is not None:
            share = self.flops_sparsity
            table.add_column("MACs", "-" if share is None else f"{share:.1%} pruned", justify="right")
        for key, sparsity in self.items():
            row = [key, f"{self.sizes[key]:,}", f"{self.counts[key]:,}", f"{sparsity:.1%}"]
            table.add_row(*row, *([] if self.flops is None else [f"{self.flops[key]:,}"]))
        return table

    def __repr__(self) -> str:
        target = "None" if self.target is None else f"{self.target:g}"
        return (f"Allocation(rule={self.rule!r}, by={self.by!r}, target={target}, weights={len(self)}, "
                f"overall={self.overall:.4f})")

    def __reduce__(self):
        return (_restore, (self.to_dict(),))

    def _read_only(self, *args, **kwargs):
        raise TypeError("An Allocation is read-only (its counts must match its sparsities); edit a copy "
                        "made with dict(allocation) instead.")

    __setitem__ = __delitem__ = update = pop = popitem = clear = setdefault = _read_only
    __ior__ = _read_only


def _restore(data: dict) -> Allocation:
    return Allocation(data["counts"], data["sizes"], rule=data["rule"], target=data["target"], by=data["by"],
                      flops=data["flops"])


def _fraction(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def _check_counts(counts, sizes, flops) -> None:
    if not isinstance(counts, Mapping) or not isinstance(sizes, Mapping):
        raise TypeError(f"`counts` and `sizes` must be mappings of weight keys. Received: counts={counts!r}")
    missing = sorted(set(counts) - set(sizes)) + sorted(set(counts) - set(flops or counts))
    if missing:
        raise ValueError(f"Every weight needs a size (and FLOPs, if given). Received: no entry for {missing[:5]}")
    for key, count in counts.items():
        if not (_is_int(count) and _is_int(sizes[key]) and 0 <= count <= sizes[key]):
            raise ValueError("Each count must be an integer between 0 and the weight's size. "
                             f"Received: counts[{key!r}]={count!r}, sizes[{key!r}]={sizes[key]!r}")


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


# -- the selected weights ----------------------------------------------------------------------


class _Weights:
    """The selected weights: keys, variables, sizes, FLOPs and how many of each may be pruned."""

    def __init__(self, model: keras.Model, layers: LayerFilter, max_sparsity: float):

        selected = select_weights(model, layers)
        self.keys = weight_keys(selected)
        self.variables = [variable for _, variable in selected]
        owners = {id(v): layer for layer in all_layers(model) for v in own_variables(layer)}
        self.sizes = np.array([math.prod(v.shape) for v in self.variables], dtype=np.int64)
        self.flops = np.array([weight_macs(owners.get(id(v)), v) for v in self.variables], dtype=np.int64)
        self.caps = np.array([max_count(max_sparsity, int(n)) for n in self.sizes], dtype=np.int64)

    def values(self) -> list[np.ndarray]:
        """Each weight as a float64 array; raises if any is NaN or infinite."""
        arrays = []
        for key, variable in zip(self.keys, self.variables):
            array = np.asarray(keras.ops.convert_to_numpy(variable)).astype(np.float64)
            if not np.isfinite(array).all():
                raise ValueError(f"Weight '{key}' contains NaN or infinite values, so it cannot be ranked. "
                                 "Fix or retrain the model first.")
            arrays.append(array)
        return arrays


def max_count(max_sparsity: float, size: int) -> int:
    """The most of ``size`` elements that can be pruned without exceeding ``max_sparsity``.

    Example:
        >>> max_count(0.99, 10), max_count(0.5, 7), max_count(0.3, 10)
        (9, 3, 3)
    """
    count = min(size, max(0, math.floor(max_sparsity * size)))
    if count < size and (count + 1) / size <= max_sparsity:
        count += 1
    while count > 0 and count / size > max_sparsity:
        count -= 1
    return count


def weight_macs(layer: keras.layers.Layer | None, variable) -> int:
    """Multiply-accumulates one example costs through ``variable``, from the input shape ``layer`` was built with.

    The weight's size times how often it is applied: once per output position of a convolution
    (per input position of a transposed one), once per position of the input's middle axes for
    Dense, RNN and other kernels (per token; sizes unknown at build time, such as a free sequence
    length, count 1), once per input position not summed by an EinsumDense kernel, and never
    for an Embedding (a lookup). Without a known input shape, once.

    Example:
        >>> conv = keras.layers.Conv2D(8, 3)
        >>> conv.build((None, 10, 10, 4))
        >>> weight_macs(conv, conv.kernel) == 3 * 3 * 4 * 8 * 8 * 8
        True
    """
    size = math.prod(variable.shape)
    if isinstance(layer, keras.layers.Embedding):
        return 0
    shape = _built_input_shape(layer)
    if shape is None:
        return size
    try:
        return size * _uses(layer, shape)
    except Exception:  # a layer that cannot compute its output shape: count one use
        return size


def _built_input_shape(layer) -> tuple | None:
    shapes = built_input_shapes(layer)
    if not isinstance(shapes, dict) or not shapes:
        return None
    shape = next(iter(shapes.values()))
    if isinstance(shape, (tuple, list)) and all(d is None or _is_int(d) for d in shape) and len(shape) >= 2:
        return tuple(shape)
    return None


def _uses(layer, shape: tuple) -> int:
    transposed = (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose)
    if isinstance(layer, transposed):
        return _positions(layer, shape)
    if hasattr(layer, "kernel_size") and hasattr(layer, "data_format"):
        return _positions(layer, tuple(layer.compute_output_shape(shape)))
    if isinstance(layer, keras.layers.EinsumDense):
        return _einsum_uses(layer.equation, shape)
    return _product(shape[1:-1])


def _positions(layer, shape: tuple) -> int:
    first = getattr(layer, "data_format", "channels_last") == "channels_first"
    return _product(shape[2:] if first else shape[1:-1])


def _einsum_uses(equation: str, shape: tuple) -> int:
    inputs = equation.replace(" ", "").split("->")[0]
    source, kernel = inputs.split(",")
    if "..." in source:
        before, after = source.split("...")
        letters = [*before, *([None] * (len(shape) - len(before) - len(after))), *after]
    else:
        letters = list(source)
    return _product([d for d, letter in list(zip(shape, letters))[1:] if letter is None or letter not in kernel])


def _product(dims) -> int:
    return math.prod(int(d) for d in dims if d is not None)


# -- allocate ----------------------------------------------------------------------------------


def allocate(
    model: keras.Model,
    target_sparsity: float,
    *,
    rule: str = "global",
    layers: LayerFilter = None,
    by: str = "weights",
    calibration_data: object = None,
    sensitivity: object = None,
    samples: int = 128,
    batch_size: int = 32,
    max_sparsity: float = 0.99,
    erk_scale: float = 1.0,
    owl_threshold: float = 5.0,
    owl_range: float = 0.08,
) -> Allocation:
    """Per-weight sparsities for the selected weights of ``model`` that meet ``target_sparsity`` exactly.

    With ``by="weights"`` exactly ``round(target_sparsity * N)`` of the ``N`` selected elements
    are pruned (rounding half up, as everywhere in keras-prune). With ``by="flops"`` the pruned
    share of the weights' multiply-accumulates, ``sum(f_i * k_i / n_i) / sum(f_i)``, is within
    half of one element's multiply-accumulates of the target (``max(f_i / n_i) / (2 * sum(f_i))``),
    where ``f_i`` is :func:`weight_macs` (convolutions count each output position).

    Rules:
        - ``"uniform"``: the same sparsity everywhere (largest remainders take the last few).
        - ``"global"``: one magnitude ranking over all selected weights, as
          ``magnitude_prune(scope="global")`` (by FLOPs: the smallest magnitudes until enough
          multiply-accumulates are pruned).
        - ``"erk"``: Erdős–Rényi-Kernel: each weight's density is proportional to
          ``(sum of its dims / product of its dims) ** erk_scale``, so small layers stay denser;
          a weight whose density would exceed 1 stays dense and the others are rescaled.
        - ``"owl"``: outlier-weighted layerwise sparsity (needs ``calibration_data``): a
          kernel's outlier ratio is the fraction of its Wanda scores ``|w| * ||x_j||`` above
          ``owl_threshold`` times their mean; sparsities spread linearly over
          ``target ± owl_range``, the most outliers the least sparse, then shift together to
          meet the target. Weights without calibrated inputs start at the target.
        - ``"sensitivity"``: least total predicted drop (needs ``sensitivity``, a result with
          ``keys``, ``sparsities`` and ``drop(key, sparsity)``): each curve is read every
          0.01 up to its largest measured sparsity (never extrapolated), made monotone, and the
          pruning goes to the lowest marginal drop per pruned element (per pruned MAC by FLOPs),
          which is optimal for the curves' lower convex hulls.

    Args:
        model: a built Keras model; it is only read.
        target_sparsity: the overall sparsity, in [0, 1).
        rule: one of the rules above.
        layers: which layers to allocate, as in :func:`keras_prune.magnitude_prune`.
        by: ``"weights"`` or ``"flops"``: what ``target_sparsity`` is a fraction of.
        calibration_data: examples the model accepts, as for :func:`keras_prune.oneshot_prune`
            (used by ``"owl"`` only; other rules ignore it, so callers may always pass it).
        sensitivity: the measured curves (used by ``"sensitivity"`` only, ignored otherwise).
        samples, batch_size: how many calibration examples, in batches of what size (``"owl"``).
        max_sparsity: no weight is pruned above this fraction.
        erk_scale: the exponent of ERK's ratio (0 is uniform).
        owl_threshold, owl_range: OWL's outlier threshold (a multiple of the mean score) and
            the spread of its sparsities.

    Returns:
        An :class:`Allocation`, to pass as ``sparsity=`` to the pruning functions.

    Raises:
        ValueError, TypeError: bad arguments, another rule's tuning (``erk_scale``, ``owl_*``), a missing or
            incomplete ``sensitivity`` result, or a target the weights cannot reach under
            ``max_sparsity`` (the message gives the highest reachable one).

    Example:
        >>> model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(64, name="wide"),
        ...                           keras.layers.Dense(4, name="head")])
        >>> plan = allocate(model, 0.8, rule="erk")
        >>> sum(plan.counts.values()) == prune_count(0.8, 32 * 64 + 64 * 4)
        True
        >>> plan["wide/kernel"] > 0.8 > plan["head/kernel"]
        True
    """
    if not isinstance(model, keras.layers.Layer):
        raise TypeError(f"Argument `model` must be a Keras model. Received: model={_short(model)}")
    target = check_sparsity("target_sparsity", target_sparsity)
    options = _Options(rule, by, layers, calibration_data, sensitivity, samples, batch_size, max_sparsity,
                       erk_scale, owl_threshold, owl_range)
    options.check()
    weights = _Weights(model, layers, float(max_sparsity))
    curves = _curves(sensitivity, weights) if rule == "sensitivity" else None
    if curves is not None:
        weights.caps = np.minimum(weights.caps, curves.caps)
    costs = np.ones(len(weights.keys)) if by == "weights" else weights.flops / weights.sizes
    goal = _goal(target, by, weights, costs)
    if rule == "global":
        counts = _global_counts(weights.values(), costs, weights.caps, goal)
    else:
        ideal = _ideal(model, options, target, weights, costs * weights.sizes, goal, curves)
        counts = round_counts(ideal * weights.sizes, weights.caps, costs, goal)
    keys = weights.keys
    return Allocation(dict(zip(keys, counts.tolist())), dict(zip(keys, weights.sizes.tolist())),
                      rule=rule, target=target, by=by, flops=dict(zip(keys, weights.flops.tolist())))


@dataclasses.dataclass
class _Options:
    """The arguments of :func:`allocate` besides the model and the target."""

    rule: str
    by: str
    layers: LayerFilter
    calibration_data: object
    sensitivity: object
    samples: int
    batch_size: int
    max_sparsity: float
    erk_scale: float
    owl_threshold: float
    owl_range: float

    def check(self) -> None:
        """Raises on a bad value, another rule's tuning, or data the rule needs and lacks."""
        check_choice("rule", self.rule, RULES)
        check_choice("by", self.by, MEASURES)
        _check_layer_filter(self.layers)
        check_int("samples", self.samples, 1)
        check_int("batch_size", self.batch_size, 1)
        check_sparsity("max_sparsity", self.max_sparsity)
        _check_number("erk_scale", self.erk_scale, 0.0)
        _check_number("owl_threshold", self.owl_threshold, 0.0, above=True)
        _check_number("owl_range", self.owl_range, 0.0, 1.0)
        for name, (user, default) in _TUNING.items():
            if self.rule != user and getattr(self, name) != default:
                raise ValueError(f"Argument `{name}` is only used by rule='{user}'. Received: rule={self.rule!r}, "
                                 f"{name}={getattr(self, name)!r}")
        for name, (user, needs) in _NEEDS.items():
            if self.rule == user and getattr(self, name) is None:
                raise ValueError(f"rule='{self.rule}' needs `{name}`: {needs}. Received: {name}=None")


# A rule's tuning given to another rule is a mistake; data and curves pass through unused.
_TUNING = {"owl_threshold": ("owl", 5.0), "owl_range": ("owl", 0.08), "erk_scale": ("erk", 1.0)}
_NEEDS = {"calibration_data": ("owl", "examples the model accepts, to score each layer's inputs"),
          "sensitivity": ("sensitivity", "a sensitivity result, the measured curves")}


def _check_number(name: str, value: object, low: float, high: float = math.inf, *, above: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"Argument `{name}` must be a number. Received: {name}={value!r}")
    if not (math.isfinite(value) and (value > low if above else value >= low) and value <= high):
        bound = f"> {low:g}" if above else f">= {low:g}"
        upper = f" and <= {high:g}" if math.isfinite(high) else ""
        raise ValueError(f"Argument `{name}` must be a finite number {bound}{upper}. Received: {name}={value!r}")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"<{type(value).__name__}>"


def _goal(target: float, by: str, weights: _Weights, costs: np.ndarray) -> float:
    """What to prune: an element count, or multiply-accumulates; raises if the caps forbid it."""
    if by == "weights":
        total, goal = int(weights.sizes.sum()), prune_count(target, int(weights.sizes.sum()))
        reachable = int(weights.caps.sum())
    else:
        total = int(weights.flops.sum())
        if total == 0:
            raise ValueError("by='flops' needs weights that cost multiply-accumulates, but the selected ones "
                             "are all lookups (embeddings). Select other layers, or use by='weights'. Received: by='flops'")
        goal, reachable = target * total, float(np.dot(costs, weights.caps))
    if goal > reachable * (1 + 1e-12):
        highest = math.floor(reachable / total * 1e4) / 1e4
        raise UnreachableTarget(highest, f"Argument `target_sparsity` cannot be met: no weight may be pruned above its cap "
                         f"(max_sparsity, and for rule='sensitivity' its largest measured sparsity), so the "
                         f"highest reachable target by {by} is {highest:.4f}. "
                         f"Received: target_sparsity={target!r}")
    return float(goal)


# -- from ideal fractions to exact counts ------------------------------------------------------


def round_counts(ideal: np.ndarray, caps: np.ndarray, costs: np.ndarray, goal: float) -> np.ndarray:
    """Integer counts near ``ideal``, at most ``caps``, whose cost ``sum(costs * counts)`` is nearest ``goal``.

    Weights of equal cost are rounded together by largest remainder, the costliest first; what
    a group cannot round away passes to the next, cheaper one, spread over it in proportion. With
    unit costs and an integer goal the total is exact; otherwise it is within half the smallest
    cost (half the largest if caps get in the way). Cost-0 elements are rounded on their own.

    Example:
        >>> round_counts(np.array([1.5, 1.5, 1.0]), np.array([5, 5, 5]), np.ones(3), 4).tolist()
        [2, 1, 1]
        >>> round_counts(np.array([2.5, 10.0]), np.array([9, 90]), np.array([8.0, 1.0]), 30.0).tolist()
        [3, 6]
    """
    ideal = np.clip(np.asarray(ideal, dtype=np.float64), 0, caps)
    costs = np.asarray(costs, dtype=np.float64)
    counts = np.zeros(ideal.size, dtype=np.int64)
    left = goal - float(np.dot(costs, ideal))
    for cost in sorted(set(costs.tolist()), reverse=True):
        group = np.flatnonzero(costs == cost)
        if cost == 0:
            counts[group] = np.floor(ideal[group] + 0.5)
            continue
        want = float(ideal[group].sum()) + left / cost
        total = int(np.clip(math.floor(want + 0.5), 0, caps[group].sum()))
        counts[group] = _largest_remainder(ideal[group], caps[group], total)
        left = (want - total) * cost
    return _settle(counts, caps, costs, goal)


def _largest_remainder(ideal: np.ndarray, caps: np.ndarray, total: int) -> np.ndarray:
    """Counts summing to ``total`` (within ``[0, caps]``): ``ideal`` scaled to that sum, floored, then
    one more for the largest remainders. A weight left dense (ideal 0) stays dense if it can."""
    if ideal.sum() > 0:
        ideal = np.clip(ideal * (total / ideal.sum()), 0, caps)
    counts = np.minimum(np.floor(ideal).astype(np.int64), caps)
    order = np.argsort(counts - ideal, kind="stable")
    while counts.sum() != total:
        step = 1 if counts.sum() < total else -1
        open_ = order[counts[order] < caps[order]] if step > 0 else order[::-1][counts[order[::-1]] > 0]
        if open_.size == 0:
            break
        chosen = open_[: abs(total - int(counts.sum()))]
        counts[chosen] += step
    return counts


def _settle(counts: np.ndarray, caps: np.ndarray, costs: np.ndarray, goal: float) -> np.ndarray:
    """Adds (removes) one element at a time while that brings the cost nearer ``goal``."""
    left = goal - float(np.dot(costs, counts))
    order = [i for i in np.argsort(-costs, kind="stable") if costs[i] > 0]
    changed = True
    while changed:
        changed = False
        for i in order:
            if left >= costs[i] / 2 and counts[i] < caps[i]:
                counts[i], left, changed = counts[i] + 1, left - costs[i], True
            elif left < -costs[i] / 2 and counts[i] > 0:
                counts[i], left, changed = counts[i] - 1, left + costs[i], True
    return counts


def fill(start: np.ndarray, slope: np.ndarray, upper: np.ndarray, weights: np.ndarray, goal: float) -> np.ndarray:
    """Sparsities ``clip(start + slope * t, 0, upper)`` for the ``t`` where ``sum(weights * s) == goal``.

    The sum only grows with ``t`` (``slope >= 0``), piecewise linearly, so ``t`` is found
    exactly between two breakpoints. ``goal`` must not exceed ``sum(weights * upper)``.

    Example:
        >>> fill(np.zeros(2), np.ones(2), np.array([0.2, 1.0]), np.array([10.0, 10.0]), 10.0).tolist()
        [0.2, 0.8]
    """
    moving = slope > 0
    points = np.unique(np.concatenate([-start[moving] / slope[moving], (upper - start)[moving] / slope[moving]]))
    if points.size == 0:
        return np.clip(start, 0, upper)
    totals = np.array([np.dot(weights, np.clip(start + slope * t, 0, upper)) for t in points])
    i = int(np.searchsorted(totals, goal))
    if i == 0:
        t = points[0]
    elif i == points.size:
        t = points[-1]
    else:
        t = points[i - 1] + (goal - totals[i - 1]) * (points[i] - points[i - 1]) / (totals[i] - totals[i - 1])
    return np.clip(start + slope * t, 0, upper)


def _ideal(model, options: _Options, target: float, weights: _Weights, scale: np.ndarray, goal: float,
           curves: _Curves | None) -> np.ndarray:
    """Each weight's fractional sparsity under the rule, with ``sum(scale * s) == goal`` before rounding."""
    upper = weights.caps / weights.sizes
    if options.rule == "sensitivity":
        return curves.fill(scale, goal)
    if options.rule == "erk":
        return fill(np.ones_like(upper), _erk_ratios(weights, options.erk_scale), upper, scale, goal)
    start = np.zeros_like(upper)
    if options.rule == "owl":
        start = _owl_start(model, options, weights, target)
    return fill(start, np.ones_like(upper), upper, scale, goal)


def _erk_ratios(weights: _Weights, scale: float) -> np.ndarray:
    ratios = [sum(v.shape) / math.prod(v.shape) if len(v.shape) else 1.0 for v in weights.variables]
    return np.asarray(ratios, dtype=np.float64) ** scale


# -- global -----------------------------------------------------------------------------------


def _global_counts(values: list[np.ndarray], costs: np.ndarray, caps: np.ndarray, goal: float) -> np.ndarray:
    """Counts from one magnitude ranking; a weight that would pass its cap is held at it, the rest re-ranked."""
    ranked = [np.sort(np.abs(v).ravel()) for v in values]
    counts = np.zeros(len(ranked), dtype=np.int64)
    active = np.ones(len(ranked), dtype=bool)
    while True:
        index = np.flatnonzero(active)
        rest = goal - float(np.dot(costs[~active], counts[~active]))
        counts[index] = _threshold_counts([ranked[i] for i in index], costs[index], rest)
        over = index[counts[index] > caps[index]]
        if over.size == 0:
            return counts
        counts[over], active[over] = caps[over], False


def _threshold_counts(ranked: list[np.ndarray], costs: np.ndarray, goal: float) -> np.ndarray:
    """How many of each sorted magnitude array fall below the global threshold that prunes ``goal``.

    Ties at the threshold go to the earlier weights first, as one stable ranking would.
    """
    sizes = np.array([a.size for a in ranked], dtype=np.int64)
    if goal <= 0 or not ranked:
        return np.zeros(len(ranked), dtype=np.int64)
    if goal >= float(np.dot(costs, sizes)):
        return sizes
    threshold = _bits_float(_smallest_bits(ranked, costs, goal))
    below = np.array([np.searchsorted(a, threshold, side="left") for a in ranked], dtype=np.int64)
    ties = np.array([np.searchsorted(a, threshold, side="right") for a in ranked], dtype=np.int64) - below
    left = goal - float(np.dot(costs, below))
    for i, cost in enumerate(costs):
        take = ties[i] if cost == 0 else (min(ties[i], math.floor(left / cost + 0.5)) if left >= cost / 2 else 0)
        below[i] += take
        left -= take * cost
    return below


def _smallest_bits(ranked: list[np.ndarray], costs: np.ndarray, goal: float) -> int:
    """The bits of the smallest magnitude ``t`` pruning at least ``goal`` with everything ``<= t``.

    Non-negative float64 values order as their bits do, so this is a bisection over integers.
    """
    def pruned(bits: int) -> float:
        t = _bits_float(bits)
        return float(np.dot(costs, [np.searchsorted(a, t, side="right") for a in ranked]))

    low, high = -1, _float_bits(max(float(a[-1]) for a in ranked if a.size))
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if pruned(middle) >= goal else (middle, high)
    return high


def _float_bits(value: float) -> int:
    return int(np.array(value, dtype=np.float64).view(np.int64))


def _bits_float(bits: int) -> float:
    return float(np.array(bits, dtype=np.int64).view(np.float64))


# -- OWL --------------------------------------------------------------------------------------


def _owl_start(model, options: _Options, weights: _Weights, target: float) -> np.ndarray:
    """Each weight's OWL sparsity before the shift: the target plus or minus ``owl_range`` by outlier ratio."""
    from keras_prune.calibrated import statistics_by_weight

    threshold, spread = options.owl_threshold, options.owl_range
    found = statistics_by_weight(model, options.calibration_data, layers=options.layers, samples=options.samples,
                                 batch_size=options.batch_size)
    ratios = np.full(len(weights.keys), np.nan)
    for i, variable in enumerate(weights.variables):
        if id(variable) in found:
            _, view, stats = found[id(variable)]
            ratios[i] = outlier_ratio(view.to_matrix(keras.ops.convert_to_numpy(variable)), stats.norms, threshold)
    start = np.full(len(weights.keys), target)
    known = ~np.isnan(ratios)
    if known.any() and np.ptp(ratios[known]) > 0:
        low, span = ratios[known].min(), np.ptp(ratios[known])
        start[known] = target + spread * (1 - 2 * (ratios[known] - low) / span)
    return start


def outlier_ratio(matrix: np.ndarray, norms: np.ndarray, threshold: float) -> float:
    """The fraction of Wanda scores ``|w| * ||x_j||`` of a ``(features, outputs)`` matrix above
    ``threshold`` times their mean (OWL's layerwise outlier distribution).

    Example:
        >>> outlier_ratio(np.ones((4, 2)), np.array([10.0, 1.0, 1.0, 1.0]), 1.5)
        0.25
    """
    scores = np.abs(np.asarray(matrix, dtype=np.float64)) * np.asarray(norms, dtype=np.float64)[:, None]
    mean = scores.mean() if scores.size else 0.0
    return float(np.mean(scores > threshold * mean)) if mean > 0 else 0.0


# -- sensitivity ------------------------------------------------------------------------------


class _Curves:
    """Each selected weight's monotone drop curve, as lower-convex-hull segments."""

    def __init__(self, segments: list[list[tuple[float, float]]], caps: np.ndarray):
        self.segments, self.caps = segments, caps

    def fill(self, scale: np.ndarray, goal: float) -> np.ndarray:
        """Sparsities that prune ``goal`` (``sum(scale * s)``), lowest drop per unit first."""
        steps = [(rise / (run * scale[i]), i, run) for i, parts in enumerate(self.segments) if scale[i] > 0
                 for run, rise in parts]
        steps.sort(key=lambda step: step[0])
        sparsity, done, start = np.zeros(len(self.segments)), 0.0, 0
        while start < len(steps) and done < goal:
            end = start
            while end < len(steps) and math.isclose(steps[end][0], steps[start][0], rel_tol=1e-12, abs_tol=1e-15):
                end += 1
            group = steps[start:end]
            amount = sum(run * scale[i] for _, i, run in group)
            share = min(1.0, (goal - done) / amount) if amount > 0 else 1.0
            for _, i, run in group:
                sparsity[i] += share * run
            done, start = done + share * amount, end
        return sparsity


def _curves(result: object, weights: _Weights) -> _Curves:
    """Reads ``result``'s curve for every selected weight; raises naming the weights it lacks."""
    for name in ("keys", "sparsities", "drop"):
        if not hasattr(result, name):
            raise TypeError("Argument `sensitivity` must be a sensitivity result with `keys`, `sparsities` and "
                            f"`drop(key, sparsity)`; it has no `{name}`. Received: sensitivity={_short(result)}")
    keys = result.keys() if callable(result.keys) else result.keys
    missing = [key for key in weights.keys if key not in set(keys)]
    if missing:
        raise ValueError(f"Argument `sensitivity` has no curve for {len(missing)} selected weights: "
                         f"{list_paths(missing)}. Measure them too, or select only measured layers (`layers`). "
                         f"Received: curves for {list_paths(list(keys))}")
    _check_sizes(result, weights)
    caps, segments = [], []
    for key, size, cap in zip(weights.keys, weights.sizes.tolist(), weights.caps.tolist()):
        top = max_count(min(_largest(result, key), cap / size), size)
        caps.append(top)
        segments.append(_hull(_grid(result, key, top / size)))
    return _Curves(segments, np.asarray(caps, dtype=np.int64))


def _check_sizes(result, weights: _Weights) -> None:
    sizes = getattr(result, "sizes", None)
    if not isinstance(sizes, Mapping):
        return
    for key, size in zip(weights.keys, weights.sizes.tolist()):
        if key in sizes and int(sizes[key]) != size:
            raise ValueError(f"Argument `sensitivity` was measured on another model: weight '{key}' has {size} "
                             f"elements here. Received: sizes[{key!r}]={sizes[key]!r}")


def _largest(result, key: str) -> float:
    measured = result.sparsities[key] if isinstance(result.sparsities, Mapping) else result.sparsities
    return max((float(s) for s in measured), default=0.0)


def _grid(result, key: str, top: float) -> tuple[np.ndarray, np.ndarray]:
    """The curve of ``key`` read every ``GRID_STEP`` up to ``top``, starting at 0 and made monotone."""
    steps = math.floor(top / GRID_STEP + 1e-9)
    points = np.unique(np.append(np.arange(steps + 1) * GRID_STEP, top))
    points = points[points <= top]
    drops = np.array([float(result.drop(key, float(s))) for s in points])
    if not np.isfinite(drops).all():
        raise ValueError(f"Argument `sensitivity` gives a NaN or infinite drop for weight '{key}'. "
                         f"Received: drops {drops.tolist()[:5]}...")
    drops = np.maximum.accumulate(np.maximum(drops - drops[0], 0.0))
    return points, drops


def _hull(curve: tuple[np.ndarray, np.ndarray]) -> list[tuple[float, float]]:
    """``(run, rise)`` segments of the lower convex hull of a curve (x increasing)."""
    hull: list[tuple[float, float]] = []
    for point in zip(*curve):
        while len(hull) >= 2 and _cross(hull[-2], hull[-1], point) <= 0:
            hull.pop()
        hull.append(point)
    return [(x1 - x0, y1 - y0) for (x0, y0), (x1, y1) in zip(hull, hull[1:])]


def _cross(a, b, c) -> float:
    return (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
