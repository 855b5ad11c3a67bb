"""What a model's weights look like after pruning: per-layer counts, patterns and bytes.

The compressed size is an estimate of a simple sparse encoding: each prunable tensor is
stored as a bitmask (one bit per weight) plus its nonzero values, or densely when that is
smaller; every other weight (biases, BatchNorm statistics) is stored densely.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator, Sequence

import keras
import numpy as np

from keras_prune.traversal import Site, weight_sites
from keras_prune.wrapper import PruneLowMagnitude

# Candidate block shapes for pattern detection, largest area first.
_BLOCKS = sorted(
    [(r, c) for r in (1, 2, 4, 8, 16) for c in (1, 2, 4, 8, 16) if r * c > 1],
    key=lambda rc: (-rc[0] * rc[1], rc),
)
_GROUPS = (2, 4, 8, 16)


@dataclasses.dataclass(frozen=True)
class LayerSummary:
    """One layer's row in a :class:`PruningReport`.

    Attributes:
        path: the layer's unique path: its name, prefixed by the names of the models and
            layers around it (``"encoder/block_0/ffn"``, see :mod:`keras_prune.traversal`).
            The row of a custom layer's own weights (outside its sub-layers) has its path.
        type: the layer's class name.
        params: number of weights the layer holds (kernels, biases, statistics).
        prunable: number of those weights pruning may zero.
        nonzeros: number of nonzero weights among all ``params``.
        sparsity: fraction of the ``prunable`` weights that are exactly zero.
        pattern: ``"dense"``, ``"unstructured"``, ``"M:N"`` (M zeros in every N consecutive
            input weights), ``"block RxC"``, ``"mixed"``, ``"-"`` (nothing prunable) or
            ``"unsupported"`` (weights of a custom layer that declares none prunable: they
            stay dense, see :attr:`PruningReport.left_dense`).
        dense_bytes: bytes of all the layer's weights stored densely.
        compressed_bytes: estimated bytes with prunable tensors stored sparsely.
    """

    path: str
    type: str
    params: int
    prunable: int
    nonzeros: int
    sparsity: float
    pattern: str
    dense_bytes: int
    compressed_bytes: int


@dataclasses.dataclass(frozen=True)
class LayerWarning:
    """A note on one layer kept in a report: what could not be done as asked, or stays dense.

    Attributes:
        layer: the layer's path, as in :class:`LayerSummary`.
        message: what happened to the layer and why (for example a pattern that does not
            fit its weights, or weights keras-prune does not know how to prune).
    """

    layer: str
    message: str

    def __str__(self) -> str:
        return f"{self.layer}: {self.message}"


@dataclasses.dataclass
class PruningReport:
    """Per-layer statistics of a model, the settings that produced it, and the model.

    Attributes:
        layers: one :class:`LayerSummary` per layer that holds weights.
        settings: what was asked (method, sparsity or threshold, scope, pattern, ...).
        history: per-round records of an iterative run (sparsity, metrics).
        warnings: one :class:`LayerWarning` per layer the run could not prune as asked
            (printed under the table).
        left_dense: one :class:`LayerWarning` per layer holding weights keras-prune does not
            know how to prune (custom layers, their own weights outside their sub-layers),
            with the reason; they stay dense (printed under the table, grouped).
        model: the model the report describes (not serialized).

    Example:
        >>> report = summarize(model)
        >>> report.totals["sparsity"], report.to_json()[:1]
        (0.0, '{')
    """

    layers: list[LayerSummary]
    settings: dict = dataclasses.field(default_factory=dict)
    history: list[dict] = dataclasses.field(default_factory=list)
    warnings: list[LayerWarning] = dataclasses.field(default_factory=list)
    left_dense: list[LayerWarning] = dataclasses.field(default_factory=list)
    model: keras.Model | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def totals(self) -> dict:
        """Sums over all layers; ``sparsity`` is over prunable weights only."""
        total = {key: sum(getattr(row, key) for row in self.layers) for key in _SUMMED}
        zeros = sum(round(row.sparsity * row.prunable) for row in self.layers)
        total["sparsity"] = zeros / total["prunable"] if total["prunable"] else 0.0
        total["compression"] = (
            total["dense_bytes"] / total["compressed_bytes"] if total["compressed_bytes"] else 1.0
        )
        return total

    def layer(self, path: str) -> LayerSummary:
        """The row of the layer whose path is ``path`` or ends with ``"/" + path``."""
        for row in self.layers:
            if row.path == path or row.path.endswith("/" + path):
                return row
        raise KeyError(f"No layer '{path}' in this report; known: {[r.path for r in self.layers]}")

    def to_dict(self) -> dict:
        """A JSON-ready dict: ``layers``, ``totals``, ``settings``, ``history``, ``warnings``
        and ``left_dense``."""
        return {
            "layers": [dataclasses.asdict(row) for row in self.layers],
            "totals": self.totals,
            "settings": dict(self.settings),
            "history": list(self.history),
            "warnings": [dataclasses.asdict(warning) for warning in self.warnings],
            "left_dense": [dataclasses.asdict(note) for note in self.left_dense],
        }

    def to_json(self, indent: int | None = 2) -> str:
        """The report as JSON text (see :meth:`to_dict`)."""
        return json.dumps(self.to_dict(), indent=indent, default=_json_default)

    def to_table(self, title: str | None = None):
        """The report as a ``rich.table.Table``: one row per layer, then the totals."""
        from rich.table import Table

        table = Table(title=title, show_footer=True, footer_style="bold")
        t = self.totals
        columns = [
            ("layer", "total", "left"),
            ("type", "", "left"),
            ("params", f"{t['params']:,}", "right"),
            ("prunable", f"{t['prunable']:,}", "right"),
            ("nonzeros", f"{t['nonzeros']:,}", "right"),
            ("sparsity", f"{t['sparsity']:.1%}", "right"),
            ("pattern", "", "left"),
            ("bytes", _human(t["dense_bytes"]), "right"),
            ("compressed", f"{_human(t['compressed_bytes'])} ({t['compression']:.2f}x)", "right"),
        ]
        for header, footer, justify in columns:
            # Paths are what --layers/--exclude match: show them whole, wrapped if need be.
            overflow = "fold" if header == "layer" else "ellipsis"
            table.add_column(header, footer=footer, justify=justify, overflow=overflow)
        for row in self.layers:
            table.add_row(
                row.path,
                row.type,
                f"{row.params:,}",
                f"{row.prunable:,}",
                f"{row.nonzeros:,}",
                f"{row.sparsity:.1%}" if row.prunable else "-",
                row.pattern,
                _human(row.dense_bytes),
                _human(row.compressed_bytes),
            )
        return table

    def print(self, console=None, title: str | None = None) -> None:
        """Prints the table, the layers left dense, then any warnings, to ``console``
        (a ``rich.console.Console``; stdout by default)."""
        from rich.console import Console

        console = console or Console()
        console.print(self.to_table(title))
        for line in self.left_dense_lines():
            console.print(line, style="dim", markup=False, highlight=False, soft_wrap=True)
        for line in self.warning_lines():
            console.print(line, style="yellow", markup=False, highlight=False, soft_wrap=True)

    def warning_lines(self) -> list[str]:
        """One ``"warning: <layer>: <message>"`` line per warning."""
        return [f"warning: {warning}" for warning in self.warnings]

    def left_dense_lines(self, limit: int = 3) -> list[str]:
        """``"left dense: <layers>: <reason>"``, one line per distinct reason.

        Layers with the same reason (the norms of every block, say) share a line that names
        the first ``limit`` of them and counts the others.
        """
        groups: dict[str, list[str]] = {}
        for note in self.left_dense:
            groups.setdefault(note.message, []).append(note.layer)
        lines = []
        for message, paths in groups.items():
            more = f" and {len(paths) - limit} more" if len(paths) > limit else ""
            lines.append(f"left dense: {', '.join(paths[:limit])}{more}: {message}")
        return lines

    def __str__(self) -> str:
        from rich.console import Console

        console = Console(width=140, record=True, file=_Null())
        self.print(console)
        return console.export_text()


_SUMMED = ("params", "prunable", "nonzeros", "dense_bytes", "compressed_bytes")


class _Null:
    """A write-only sink, so rich can render to text without touching stdout."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


@dataclasses.dataclass(frozen=True)
class WeightFacts:
    """What a pruning run already knows about one weight it wrote, so a report need not read it.

    Attributes:
        size: number of values.
        itemsize: bytes per value.
        nonzeros: number of nonzero values.
        pattern: the pattern :func:`detect_pattern` would name, when the run could tell it
            (``"unstructured"``), or ``None`` to detect it from the weight. ``"dense"`` and an
            all-zero weight follow from the counts.
    """

    size: int
    itemsize: int
    nonzeros: int
    pattern: str | None = None


def summarize(
    model: keras.Model,
    *,
    settings: dict | None = None,
    known: Sequence[tuple[object, WeightFacts]] | None = None,
) -> PruningReport:
    """Counts weights, zeros, patterns and bytes per layer of a built ``model``.

    Args:
        model: a built Keras model (or layer).
        settings: optional record of how the model was pruned, kept in the report.
        known: ``(variable, facts)`` pairs a pruning run counted while writing those
            variables (see :class:`WeightFacts`); they are not read again. Other weights are
            read one at a time.

    Returns:
        A :class:`PruningReport` with one row per :class:`~keras_prune.traversal.Site`
        holding weights, at any depth (layers inside custom layers and nested models too),
        and the layers it leaves dense with their reasons (``report.left_dense``).

    Example:
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        >>> report = summarize(model)
        >>> report.layers[0].params, report.totals["sparsity"]
        (10, 0.0)
    """
    facts = {id(variable): fact for variable, fact in (known or ())}
    sites = [site for site in weight_sites(model) if site.variables]
    return PruningReport(
        layers=[_layer_summary(site, facts) for site in sites],
        settings=dict(settings or {}),
        left_dense=[LayerWarning(site.path, site.reason) for site in sites if site.reason],
        model=model,
    )


def iter_layers(model: keras.layers.Layer) -> Iterator[tuple[str, keras.layers.Layer]]:
    """``(path, layer)`` for every layer of ``model`` that holds weights, at any depth.

    One pair per :class:`~keras_prune.traversal.Site`: a layer inside a custom layer or a
    nested model is visited once, with a unique path that joins the names around it
    (``"encoder/block_0/ffn"``) and does not change when the model is saved and reloaded.
    """
    for site in weight_sites(model):
        yield site.path, site.layer


def _layer_summary(site: Site, known: dict[int, WeightFacts]) -> LayerSummary:
    kind = type(site.layer).__name__
    if isinstance(site.layer, PruneLowMagnitude):
        kind = f"{kind}({type(site.layer.layer).__name__})"
    prunable = {id(v) for v in site.prunable}
    params = n_prunable = nonzeros = zeros = dense = saved = 0
    patterns = []
    for variable in site.variables:  # one weight in memory at a time
        facts = known.get(id(variable))
        weights = None
        if facts is None:
            weights = np.asarray(keras.ops.convert_to_numpy(variable))
            facts = WeightFacts(weights.size, weights.itemsize, int(np.count_nonzero(weights)))
        params += facts.size
        nonzeros += facts.nonzeros
        dense += facts.size * facts.itemsize
        if id(variable) not in prunable:
            continue
        n_prunable += facts.size
        zeros += facts.size - facts.nonzeros
        saved += facts.size * facts.itemsize - _sparse_bytes(facts.size, facts.nonzeros, facts.itemsize)
        if facts.nonzeros == facts.size:
            patterns.append("dense")
        elif facts.nonzeros == 0:
            patterns.append("unstructured")
        elif facts.pattern is not None:
            patterns.append(facts.pattern)
        else:
            if weights is None:
                weights = np.asarray(keras.ops.convert_to_numpy(variable))
            patterns.append(detect_pattern(weights))
    pattern = _merge_patterns(patterns) if site.prunable else "-"
    if site.reason:
        pattern = "unsupported"
    return LayerSummary(
        path=site.path,
        type=kind,
        params=params,
        prunable=n_prunable,
        nonzeros=nonzeros,
        sparsity=zeros / n_prunable if n_prunable else 0.0,
        pattern=pattern,
        dense_bytes=dense,
        compressed_bytes=dense - saved,
    )


def sparse_bytes(weights: np.ndarray) -> int:
    """Bytes of ``weights`` as a bitmask plus nonzero values, or dense if that is smaller.

    Example:
        >>> sparse_bytes(np.zeros(64, "float32")), sparse_bytes(np.ones(64, "float32"))
        (8, 256)
    """
    weights = np.asarray(weights)
    return _sparse_bytes(weights.size, int(np.count_nonzero(weights)), weights.itemsize)


def _sparse_bytes(size: int, nonzeros: int, itemsize: int) -> int:
    return min(size * itemsize, -(-size // 8) + nonzeros * itemsize)


def detect_pattern(weights: np.ndarray) -> str:
    """Names the sparsity pattern of one tensor's zeros.

    ``"M:N"`` means exactly M zeros in every group of N consecutive weights along the input
    axis (as ``sparsity_m_by_n=(M, N)`` prunes); ``"block RxC"`` means the zeros cover whole
    RxC blocks of the 2-D view (all leading axes folded into rows).

    Example:
        >>> detect_pattern(np.array([[0.0], [1.0], [0.0], [2.0]]))
        '2:4'
    """
    zero = np.asarray(weights) == 0
    if not zero.any():
        return "dense"
    if zero.all():
        return "unstructured"
    if unstructured_from_prefix(zero[:prefix_rows(zero.shape)], zero.shape):
        return "unstructured"  # the usual case, decided from the leading rows alone
    # Blocks first: zeros in whole blocks can also happen to count M per group of N.
    matrix = zero.reshape(-1, zero.shape[-1]) if zero.ndim >= 2 else zero.reshape(1, -1)
    for rows, cols in _BLOCKS:
        if rows <= matrix.shape[0] and cols <= matrix.shape[1] and _is_blocked(matrix, rows, cols):
            return f"block {rows}x{cols}"
    for n in _GROUPS:
        m = _zeros_per_group(zero, n)
        if m:
            return f"{m}:{n}"
    return "unstructured"


PREFIX = 1 << 16  # elements of the leading rows that usually rule every pattern out


def prefix_rows(shape: tuple[int, ...]) -> int:
    """How many leading rows (along the first axis) :func:`detect_pattern` checks first."""
    if not shape:
        return 1
    row = math.prod(shape[1:]) if len(shape) > 1 else 1
    return max(32, PREFIX // max(row, 1))


def unstructured_from_prefix(zero: np.ndarray, shape: Sequence[int]) -> bool:
    """Whether the zeros of a tensor of ``shape`` fit none of the block and M:N patterns that
    :func:`detect_pattern` names, judging from ``zero``, the zero mask of its leading rows
    (a slice along its first axis, any shape with that many elements).

    ``True`` is exact: some block or group in those rows already breaks every pattern, so
    :func:`detect_pattern` says ``"unstructured"`` whenever the tensor has zeros and nonzeros.
    ``False`` means the rows cannot tell (a pattern may hold): detect on the whole tensor.

    Example:
        >>> zero = np.random.default_rng(0).random((64, 8)) < 0.5  # 64 of 128 rows
        >>> unstructured_from_prefix(zero, (128, 8))
        True
        >>> unstructured_from_prefix(np.kron(zero[:16, :2], np.ones((4, 4), bool)), (128, 8))
        False
    """
    shape = tuple(int(d) for d in shape)
    if not shape or not np.size(zero):
        return False
    zero = np.asarray(zero, dtype=bool).reshape((-1, *shape[1:]))
    if len(shape) >= 2:
        rows, cols = math.prod(shape[:-1]), shape[-1]
        matrix = zero.reshape(-1, cols)
    else:
        rows, cols = 1, shape[0]
        matrix = zero.reshape(1, -1)
    for r, c in _BLOCKS:
        if r > rows or c > cols:
            continue
        if len(shape) >= 2:
            part = matrix[: (matrix.shape[0] // r) * r]
        else:
            part = matrix[:, : (matrix.shape[1] // c) * c]
        if not part.size:
            return False
        corner = part[:r, : max(c, (min(part.shape[1], 256) // c) * c)]  # one row of blocks, first
        if _is_blocked(corner, r, c) and _is_blocked(part, r, c):
            return False
    axis = len(shape) - 2 if len(shape) >= 2 else 0
    for n in _GROUPS:
        length = shape[axis]
        if length < n or length % n:
            continue  # detect_pattern needs whole groups along the input axis
        part = zero[: (zero.shape[0] // n) * n] if axis == 0 else zero
        if not part.size:
            return False
        counts = np.moveaxis(part, axis, -1).reshape(-1, n).sum(axis=1)
        if counts.min() == counts.max() and counts[0] > 0:
            return False
    return True


def _zeros_per_group(zero: np.ndarray, n: int) -> int:
    """M if every full group of ``n`` along the input axis has exactly M zeros, else 0."""
    axis = zero.ndim - 2 if zero.ndim >= 2 else 0
    moved = np.moveaxis(zero, axis, -1)
    full = (moved.shape[-1] // n) * n
    if full == 0 or full != moved.shape[-1]:
        return 0
    counts = moved.reshape(-1, n).sum(axis=1)
    return int(counts[0]) if counts.min() == counts.max() else 0


def _is_blocked(matrix: np.ndarray, rows: int, cols: int) -> bool:
    """Whether every (rows x cols) block of the boolean ``matrix`` is all True or all False."""
    r, c = matrix.shape
    padded = np.pad(matrix, ((0, -r % rows), (0, -c % cols)), mode="edge")
    blocks = padded.reshape(padded.shape[0] // rows, rows, padded.shape[1] // cols, cols)
    return bool(np.all(blocks.all(axis=(1, 3)) == blocks.any(axis=(1, 3))))


def _merge_patterns(patterns: Sequence[str]) -> str:
    distinct = set(patterns) - {"dense"}
    if not distinct:
        return "dense"
    return distinct.pop() if len(distinct) == 1 else "mixed"


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return str(n)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (tuple, set)):
        return list(value)
    return str(value)
