"""The comparison's three plots: accuracy vs sparsity, training overhead, file sizes."""

from __future__ import annotations

from pathlib import Path

COLORS = {"keras_prune": "tab:blue", "tfmot": "tab:orange", "keras_prune_global": "tab:green"}
LABELS = {"keras_prune": "keras-prune", "tfmot": "tfmot", "keras_prune_global": "keras-prune, global ranking"}


def _series(summary: dict, model: str, tool: str, key: str) -> tuple[list[float], list[float]]:
    rows = sorted((r for r in summary["rows"] if r["model"] == model and r["tool"] == tool and r["sparsity"] > 0),
                  key=lambda r: r["sparsity"])
    return [r["sparsity"] for r in rows], [r[key] for r in rows]


def _figure(models: list[str]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.6), squeeze=False)
    return fig, axes[0]


def _positions(sparsities: list[float]) -> dict[float, int]:
    return {s: i for i, s in enumerate(sorted(sparsities))}


def accuracy_plot(summary: dict, path: Path) -> None:
    models = list(summary["dense"])
    fig, axes = _figure(models)
    for ax, model in zip(axes, models):
        all_s = sorted({r["sparsity"] for r in summary["rows"] if r["model"] == model and r["sparsity"] > 0})
        pos = _positions(all_s)
        for shift, tool in ((-0.08, "keras_prune"), (0.08, "tfmot"), (0.0, "keras_prune_global")):
            xs, means = _series(summary, model, tool, "accuracy_mean")
            if not xs:
                continue
            _, spreads = _series(summary, model, tool, "accuracy_spread")
            ax.errorbar([pos[x] + shift for x in xs], [100 * m for m in means], yerr=[100 * s for s in spreads],
                        marker="o", capsize=3, color=COLORS[tool], label=LABELS[tool])
            base = [r for r in summary["rows"] if r["model"] == model and r["tool"] == tool and r["sparsity"] == 0]
            if base:
                ax.axhline(100 * base[0]["accuracy_mean"], color=COLORS[tool], linestyle=":", linewidth=1)
        ax.set_xticks(range(len(all_s)), [f"{100 * s:g}%" for s in all_s])
        ax.set_title(model, fontsize=9)
        ax.set_xlabel("sparsity")
        ax.set_ylabel("test accuracy (%)")
        ax.legend(fontsize=7, title="dotted: plain fine-tuning", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def overhead_plot(summary: dict, path: Path) -> None:
    models = list(summary["dense"])
    fig, axes = _figure(models)
    for ax, model in zip(axes, models):
        all_s = sorted({r["sparsity"] for r in summary["rows"] if r["model"] == model and r["sparsity"] > 0})
        pos = _positions(all_s)
        for shift, tool in ((-0.2, "keras_prune"), (0.2, "tfmot")):
            xs, ratios = _series(summary, model, tool, "overhead_cpu_seconds")
            ax.bar([pos[x] + shift for x in xs], [r or 0 for r in ratios], width=0.4, color=COLORS[tool],
                   label=LABELS[tool])
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(all_s)), [f"{100 * s:g}%" for s in all_s])
        ax.set_title(model, fontsize=9)
        ax.set_xlabel("sparsity")
        ax.set_ylabel("CPU time per epoch / plain fit")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def sizes_plot(summary: dict, path: Path) -> None:
    models = list(summary["dense"])
    fig, axes = _figure(models)
    series = (("keras_prune", "keras_gzip_bytes", "keras-prune .keras gzip", "--"),
              ("keras_prune", "sparse_bytes", "keras-prune .kpsparse", "-"),
              ("tfmot", "h5_gzip_bytes", "tfmot .h5 gzip", "--"),
              ("tfmot", "sparse_bytes", "tfmot weights .kpsparse", "-"))
    for ax, model in zip(axes, models):
        for tool, key, label, style in series:
            xs, values = _series(summary, model, tool, key)
            xs, values = [x for x, v in zip(xs, values) if v is not None], [v for v in values if v is not None]
            ax.plot([100 * x for x in xs], [v / 1024 for v in values], style, marker="o" if tool == "tfmot" else ".",
                    markersize=8 if tool == "tfmot" else 5, fillstyle="none" if tool == "tfmot" else "full",
                    color=COLORS[tool], label=label)
        dense = [r for r in summary["rows"] if r["model"] == model and r["tool"] == "keras_prune" and r["sparsity"] == 0]
        if dense:
            ax.axhline(dense[0]["keras_bytes"] / 1024, color="gray", linestyle=":", label="dense .keras")
        ax.set_yscale("log")
        ax.set_title(model, fontsize=9)
        ax.set_xlabel("sparsity (%)")
        ax.set_ylabel("KiB")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_plots(summary: dict, folder: Path, name: str) -> dict[str, str]:
    """Writes the three PNGs; returns their file names by plot kind."""
    written = {}
    for kind, draw in (("accuracy", accuracy_plot), ("overhead", overhead_plot), ("sizes", sizes_plot)):
        path = Path(folder) / f"{name}_{kind}.png"
        draw(summary, path)
        written[kind] = path.name
    return written
