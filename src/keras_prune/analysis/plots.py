"""PNG plots of pruning results, drawn with matplotlib's object API (no global pyplot state)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from keras_prune.analysis.report import PruningReport
from keras_prune.io import atomic_write


def plot_layer_sparsity(report: PruningReport, path: str | os.PathLike) -> str:
    """Writes a horizontal bar chart of each prunable layer's sparsity to ``path`` (PNG).

    Example:
        >>> plot_layer_sparsity(summarize(model), "sparsity.png")
        'sparsity.png'
    """
    from matplotlib.figure import Figure

    rows = [row for row in report.layers if row.prunable]
    if not rows:
        raise ValueError("The report has no prunable layers to plot.")
    fig = Figure(figsize=(7, 0.35 * len(rows) + 1.5))
    ax = fig.add_subplot()
    ax.barh([r.path for r in rows], [100 * r.sparsity for r in rows], color="tab:blue")
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("sparsity (% of prunable weights that are zero)")
    ax.set_title(f"Per-layer sparsity (total {report.totals['sparsity']:.1%})")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    return str(path)


def plot_metric_vs_sparsity(
    series: Mapping[str, Sequence[tuple[float, float]]],
    path: str | os.PathLike,
    *,
    metric: str = "accuracy",
    baseline: float | None = None,
    title: str | None = None,
) -> str:
    """Writes a line plot of a metric against sparsity, one line per named series (PNG).

    Args:
        series: name -> list of ``(sparsity, metric)`` points, e.g. one series per method.
        path: the PNG file to write.
        metric: the metric's name for the y axis.
        baseline: the dense model's value, drawn as a dashed line.
        title: the plot title.

    Example:
        >>> plot_metric_vs_sparsity({"iterative": [(0.5, 0.99), (0.9, 0.98)]}, "acc.png")
        'acc.png'
    """
    from matplotlib.figure import Figure

    if not any(series.values()):
        raise ValueError("Argument `series` has no points to plot.")
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for name, points in series.items():
        points = sorted(points)
        ax.plot([100 * s for s, _ in points], [m for _, m in points], marker="o", label=name)
    if baseline is not None:
        ax.axhline(baseline, color="gray", linestyle="--", label="dense")
    ax.set_xlabel("sparsity (%)")
    ax.set_ylabel(metric)
    ax.set_title(title or f"{metric} vs sparsity")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    return str(path)


def plot_history(report: PruningReport, path: str | os.PathLike, *, metric: str = "accuracy") -> str:
    """Plots an iterative run's validation ``metric`` per round against its sparsity (PNG)."""
    points = [(h["sparsity"], h[metric]) for h in report.history if metric in h]
    if not points:
        raise ValueError(f"The report's history has no `{metric}` values to plot.")
    baseline = report.settings.get(f"dense_{metric}")
    return plot_metric_vs_sparsity({"iterative": points}, path, metric=metric, baseline=baseline)
