"""From cell JSON files to the summary JSON, the plots and the results page (docs/results.md).

`summarize` and `render` are pure (dicts in, dict/markdown out), so they are tested on tiny
fake cells. Rules used throughout:

* spread: the sample standard deviation of test accuracy over seeds (0 with one seed);
* keras-prune vs tfmot at one (model, sparsity): a tie when the difference of the means is
  within the larger of the two spreads, otherwise "better" or "worse";
* accuracy loss: the plain fine-tuned model's mean (same tool, same budget) minus the pruned
  mean; it counts once it exceeds the larger spread, and at least 0.1 percentage point;
* training overhead: median epoch time (first epoch excluded) of a pruned run divided by the
  plain run of the same tool, model and seed, which ran in the same process just before.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import shared

# Han, Pool, Tran, Dally 2015, "Learning both Weights and Connections for Efficient Neural
# Networks", Table 1: top-1 test error (%) before and after pruning, and the weights kept.
HAN_2015 = {
    "lenet_300_100": {"dense_error": 1.64, "pruned_error": 1.59, "weights": "267K -> 22K", "compression": 12},
    "lenet5": {"dense_error": 0.80, "pruned_error": 0.77, "weights": "431K -> 36K", "compression": 12},
}
MIN_LOSS = 0.001
# What the two implementations do differently in this like-for-like setting (read from both
# code bases); it explains the results, whatever they are.
MECHANISMS = """## Why the two tools land so close, and where they differ

Run like for like, the two tools execute the same algorithm: at each update step, rank every
kernel's weights by magnitude and keep the largest `round((1 - s) n)`; train with the pruned
weights at zero in every forward pass. From the same weights, data order and schedule they
follow nearly the same trajectory, so accuracy ties are the expected outcome. What differs:

- Holding zeros. tfmot assigns `kernel * mask` inside every training forward pass and lets the
  optimizer move pruned weights between steps (they are zeroed again by the next pass and at
  each epoch end). keras-prune zeroes them right after each optimizer step, so every saved or
  checkpointed model is sparse; the kept weights see the same updates either way.
- Step counting. tfmot counts the step inside the train step, starting from 1; keras-prune
  counts before each batch, starting from 0. A mask update may fire one batch apart.
- Ties and exact counts. tfmot keeps every weight whose magnitude equals the threshold;
  keras-prune prunes exactly `round(s n)` (see the achieved sparsity column).
- Where the time goes. tfmot's mask update is a graph op in every train step (a conditional
  top-k plus one assign per pruned weight). keras-prune decides in its callback, in Python,
  before each batch, and recomputes masks only on update steps, with numpy; the zeroing after
  the optimizer step is compiled into the train step. Keras 3 and Keras 2 also have different
  `fit` loops, which shows in the plain fine-tuning times of the two tools.
- Numerics. Keras 3 and Keras 2 build different graphs for the same layers (reduction order),
  so even plain fine-tuning differs in the last digits between the two tools."""
TOOL_NAMES = {"keras_prune": "keras-prune", "tfmot": "tfmot", "keras_prune_global": "keras-prune, global ranking"}
BASELINE_TOOL = {"keras_prune_global": "keras_prune"}  # same plain fine-tuning: not run twice


# Results name of an optional run with more fine-tuning, for the Han et al. comparison:
# harness.py --name han_long --models lenet5 --seeds 0 --sparsities 0.92 0.95 --epochs 8
#            --epoch-samples 60000 --tools keras_prune keras_prune_global --no-page
LONGER_BUDGET = "han_long"


def load_cells(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(Path(folder).glob("*.json"))]


def _spread(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _median_kept(seconds: list[float]) -> float:
    return statistics.median(seconds[1:])  # the first epoch includes tracing


def summarize(cells: list[dict], dense: list[dict]) -> dict:
    """Aggregates cells over seeds: accuracy, overhead, sizes, verdicts, where loss begins."""
    plain = {(c["tool"], c["model"], c["seed"]): c for c in cells if c["sparsity"] == 0}
    groups: dict[tuple, list[dict]] = {}
    for cell in cells:
        groups.setdefault((cell["model"], cell["sparsity"], cell["tool"]), []).append(cell)
    order = {name: i for i, name in enumerate(shared.MODELS)}
    rows = [_row(key, group, plain) for key, group in sorted(groups.items(), key=lambda kv: (order.get(kv[0][0], 99), kv[0]))]
    return {
        "rows": rows,
        "dense": _dense(dense),
        "comparisons": _comparisons(rows),
        "loss_begins": _loss_begins(rows),
        "overhead": _overhead_summary(rows),
        "versions": {k: v for c in cells for k, v in c.get("versions", {}).items()},
        "machine": _machine(cells),
    }


def _machine(cells: list[dict]) -> dict:
    seen = [c["machine"] for c in cells if "machine" in c]
    if not seen:
        return {}
    loads = [m["load_average_1min"] for m in seen]
    return {**{k: seen[0][k] for k in ("cpu", "cores", "system", "python")},
            "load_average_1min_range": [min(loads), max(loads)]}


def _row(key: tuple, group: list[dict], plain: dict) -> dict:
    model, sparsity, tool = key
    accuracies = [c["accuracy"] for c in group]
    row = {"model": model, "sparsity": sparsity, "tool": tool, "seeds": sorted(c["seed"] for c in group),
           "accuracy_mean": statistics.fmean(accuracies), "accuracy_spread": _spread(accuracies),
           "accuracy_by_seed": {c["seed"]: c["accuracy"] for c in group},
           "kernel_sparsity": statistics.fmean(c["kernel_sparsity"] for c in group),
           "epoch_seconds": statistics.median(_median_kept(c["epoch_seconds"]) for c in group),
           "epoch_cpu_seconds": statistics.median(_median_kept(c["epoch_cpu_seconds"]) for c in group)}
    base = BASELINE_TOOL.get(tool, tool)
    for kind in ("seconds", "cpu_seconds"):
        ratios = [_median_kept(c[f"epoch_{kind}"]) / _median_kept(plain[(base, model, c["seed"])][f"epoch_{kind}"])
                  for c in group if (base, model, c["seed"]) in plain]
        row[f"overhead_{kind}"] = statistics.median(ratios) if ratios else None
        row[f"overhead_{kind}_per_seed"] = ratios
    for size in ("keras_bytes", "keras_gzip_bytes", "h5_bytes", "h5_gzip_bytes", "sparse_bytes", "negative_zeros"):
        values = [c[size] for c in group if size in c]
        row[size] = statistics.median(values) if values else None
    in_keras3 = [c["accuracy_in_keras3"] for c in group if "accuracy_in_keras3" in c]
    row["accuracy_in_keras3_mean"] = statistics.fmean(in_keras3) if in_keras3 else None
    return row


def _dense(dense: list[dict]) -> dict:
    result = {}
    for model in [m for m in shared.MODELS if any(d["model"] == m for d in dense)]:
        accuracies = [d["accuracy"] for d in dense if d["model"] == model]
        result[model] = {"accuracy_mean": statistics.fmean(accuracies), "accuracy_spread": _spread(accuracies),
                         "seeds": len(accuracies), "weights": dense[0]["weights"] if dense else None}
        result[model]["weights"] = next(d["weights"] for d in dense if d["model"] == model)
    return result


def _index(rows: list[dict]) -> dict:
    return {(r["model"], r["sparsity"], r["tool"]): r for r in rows}


def _verdict(difference: float, spread: float, seeds: int) -> str:
    """"tie" within the seed spread; with one seed there is no spread to judge by."""
    if seeds < 2:
        return "one seed"
    return "tie" if abs(difference) <= spread else ("better" if difference > 0 else "worse")


def _comparisons(rows: list[dict]) -> list[dict]:
    index, result = _index(rows), []
    for (model, sparsity, tool), ours in index.items():
        theirs = index.get((model, sparsity, "tfmot"))
        if tool != "keras_prune" or theirs is None:
            continue
        seeds = sorted(set(ours["accuracy_by_seed"]) & set(theirs["accuracy_by_seed"]))
        if not seeds:
            continue
        a = [ours["accuracy_by_seed"][s] for s in seeds]  # only seeds both tools ran: a paired comparison
        b = [theirs["accuracy_by_seed"][s] for s in seeds]
        diff = statistics.fmean(a) - statistics.fmean(b)
        spread = max(_spread(a), _spread(b))
        verdict = _verdict(diff, spread, len(seeds))
        time_ratio = ours["epoch_seconds"] / theirs["epoch_seconds"]
        cpu_ratio = ours["epoch_cpu_seconds"] / theirs["epoch_cpu_seconds"]
        result.append({"model": model, "sparsity": sparsity, "keras_prune": statistics.fmean(a),
                       "tfmot": statistics.fmean(b), "difference": diff, "spread": spread,
                       "keras_prune_spread": _spread(a), "tfmot_spread": _spread(b),
                       "verdict": verdict, "seeds": len(seeds),
                       "epoch_time_ratio": time_ratio, "epoch_cpu_ratio": cpu_ratio})
        extra = index.get((model, sparsity, "keras_prune_global"))
        if extra is not None:
            diff = extra["accuracy_mean"] - theirs["accuracy_mean"]
            spread = max(extra["accuracy_spread"], theirs["accuracy_spread"])
            seeds = min(len(extra["seeds"]), len(theirs["seeds"]))
            result[-1].update(keras_prune_global=extra["accuracy_mean"], global_difference=diff,
                              global_verdict=_verdict(diff, spread, seeds))
    return result


def _overhead_summary(rows: list[dict]) -> dict:
    """Per model: each tool's CPU-time overhead over all its pruned cells (median and range).

    keras-prune's is "lower" or "higher" only when the two ranges do not overlap; otherwise the
    difference is within the noise of the machine.
    """
    result = {}
    for model in dict.fromkeys(r["model"] for r in rows):
        ratios = {tool: [x for r in rows if r["model"] == model and r["tool"] == tool and r["sparsity"] > 0
                         for x in r["overhead_cpu_seconds_per_seed"]] for tool in ("keras_prune", "tfmot")}
        if not all(ratios.values()):
            continue
        ours, theirs = ratios["keras_prune"], ratios["tfmot"]
        verdict = ("lower" if max(ours) < min(theirs) else "higher" if min(ours) > max(theirs)
                   else "within noise")
        result[model] = {**{tool: {"median": statistics.median(v), "min": min(v), "max": max(v), "cells": len(v)}
                            for tool, v in ratios.items()}, "keras_prune_verdict": verdict}
    return result


def _loss_begins(rows: list[dict]) -> dict:
    """Per model and tool: the accuracy loss at each sparsity, and the first sparsity with a loss."""
    index, result = _index(rows), {}
    for model, tool in dict.fromkeys((r["model"], r["tool"]) for r in rows):
        base = index.get((model, 0.0, BASELINE_TOOL.get(tool, tool)))
        if base is None:
            continue
        losses = {}
        for (m, s, t), row in sorted(index.items()):
            seeds = sorted(set(base["accuracy_by_seed"]) & set(row["accuracy_by_seed"]))
            if m == model and t == tool and s > 0 and seeds:  # paired: the seeds both runs have
                before = [base["accuracy_by_seed"][seed] for seed in seeds]
                after = [row["accuracy_by_seed"][seed] for seed in seeds]
                tolerance = max(MIN_LOSS, _spread(before), _spread(after))
                losses[s] = {"loss": statistics.fmean(before) - statistics.fmean(after), "tolerance": tolerance}
        first = next((s for s, v in sorted(losses.items()) if v["loss"] > v["tolerance"]), None)
        result.setdefault(model, {})[tool] = {"baseline": base["accuracy_mean"], "losses": losses,
                                              "first_loss_at": first}
    return result


def write_all(name: str, out: Path, budgets: dict[str, dict], page: Path | None, command: str) -> dict:
    """Summarizes the cells under ``out``; writes the summary JSON, the plots and the page.

    ``budgets`` maps each model to its fine-tuning budget (the job settings of the harness);
    ``command`` is the harness command line that reproduces the results.
    """
    import plots

    summary = summarize(load_cells(out / "cells"), load_cells(out / "dense"))
    models = list(summary["dense"])
    summary.update(name=name, command=command, budget={m: budgets[m] for m in models}, han_2015=HAN_2015,
                   models={m: shared.MODELS[m][3] for m in models},
                   schedule={m: shared.schedule_steps(budgets[m]) for m in models})
    longer = shared.RESULTS / LONGER_BUDGET / "cells"
    if longer.is_dir():
        summary["longer_budget"] = load_cells(longer)
    interleaved = shared.RESULTS / "tfmot_overhead.json"
    if interleaved.exists():
        summary["interleaved_overhead"] = json.loads(interleaved.read_text())
    summary["plots"] = plots.write_plots(summary, shared.RESULTS, name)
    shared.write_json(shared.RESULTS / f"{name}.json", summary)
    text = render(summary)
    print(text)
    if page is not None:
        tmp = page.with_suffix(".md.tmp")
        tmp.write_text(text)
        tmp.replace(page)
    return summary


def pct(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}"


def _kb(x: float | None) -> str:
    return "-" if x is None else f"{x / 1024:,.0f}"


def render(summary: dict) -> str:
    """The results page in Markdown."""
    parts = [_intro(summary), _verdicts(summary), _han(summary), _loss(summary), _timing(summary),
             _interleaved(summary), _sizes(summary), _shortfalls(summary), MECHANISMS]
    return "\n\n".join(p for p in parts if p) + "\n"


def _intro(summary: dict) -> str:
    m = summary["machine"]
    b = next(iter(summary["budget"].values()))  # what all models share
    models = "\n".join(f"- `{k}`: {v}" for k, v in summary["models"].items())
    images = [f"![{k}](../benchmarks/results/{Path(v).name})" for k, v in summary.get("plots", {}).items()]
    return f"""# Results: keras-prune vs tfmot

Generated by `benchmarks/tfmot_compare/page.py` from `benchmarks/results/{summary['name']}.json`.
Reproduce with:

```
{summary['command']}
```

Both tools start from the same pretrained dense weights (one per model and seed, trained with
Keras 3) and fine-tune with the same magnitude-pruning schedule: PolynomialDecay from 0 to the
target sparsity (power 3), a mask update every {b['frequency']} steps over the first half of the
steps, then held. Same optimizer (Adam, learning rate {b['learning_rate']}), batch size {b['batch_size']},
epochs, training images per epoch (a seeded random subset each epoch, in the same order for both
tools) and seeds:

{_budget_table(summary)}

Every layer's kernel is pruned to the target
(per-layer ranking, tfmot's default). Sparsity 0 is plain fine-tuning with the same budget: the
baseline for accuracy loss and training overhead. keras-prune runs on Keras
{summary.get('versions', {}).get('keras', '')} (TensorFlow backend); tfmot {_version(summary)} runs on Keras 2 (`tf_keras`
{summary.get('versions', {}).get('tf_keras', '')}) in its own process and virtualenv.

Models:
{models}

{_machine_text(m)}

Rules: a difference of mean accuracy within the larger seed-to-seed standard deviation is a tie.
An accuracy loss counts once it exceeds that spread and 0.1 percentage point.

{chr(10).join(images)}"""


def _budget_table(summary: dict) -> str:
    lines = ["| model | epochs | images per epoch | steps | schedule end step |", "|---|---|---|---|---|"]
    for model, b in summary["budget"].items():
        steps = b["epochs"] * -(-b["epoch_samples"] // b["batch_size"])
        lines.append(f"| {model} | {b['epochs']} | {b['epoch_samples']:,} | {steps} | "
                     f"{summary['schedule'][model]['end_step']} |")
    return "\n".join(lines)


def _machine_text(m: dict) -> str:
    if not m:
        return "Machine: not recorded."
    low, high = m["load_average_1min_range"]
    return (f"Machine: {m['cpu']}, {m['cores']} cores, {m['system']}, Python {m['python']}. The 1-minute load "
            f"average seen at the end of the cells ranged from {low:.1f} to {high:.1f}"
            + (f" on {m['cores']} cores: the machine was shared with other jobs, so wall times are noisy; CPU "
               "times, and ratios measured within one process, are steadier." if high > m["cores"] else "."))


def _version(summary: dict) -> str:
    return summary.get("versions", {}).get("tfmot", "")


def _verdicts(summary: dict) -> str:
    lines = ["## Accuracy: keras-prune vs tfmot", "",
             "Test accuracy (%), mean over the seeds both tools ran, ± the seed-to-seed standard deviation.", "",
             "| model | sparsity | seeds | keras-prune | tfmot | difference (pp) | verdict | achieved sparsity "
             "keras-prune / tfmot (%) |",
             "|---|---|---|---|---|---|---|---|"]
    rows = _index(summary["rows"])
    has_global = any("keras_prune_global" in c for c in summary["comparisons"])
    if has_global:
        lines[-2] += " keras-prune, global ranking (vs tfmot) |"
        lines[-1] += "---|"
    for c in summary["comparisons"]:
        ours, theirs = rows[(c["model"], c["sparsity"], "keras_prune")], rows[(c["model"], c["sparsity"], "tfmot")]
        lines.append(f"| {c['model']} | {pct(c['sparsity'], 0)}% | {c['seeds']} | "
                     f"{pct(c['keras_prune'])} ± {pct(c['keras_prune_spread'])} | "
                     f"{pct(c['tfmot'])} ± {pct(c['tfmot_spread'])} | "
                     f"{100 * c['difference']:+.2f} | {c['verdict']} | "
                     f"{pct(ours['kernel_sparsity'], 3)} / {pct(theirs['kernel_sparsity'], 3)} |")
        if has_global:
            extra = rows.get((c["model"], c["sparsity"], "keras_prune_global"))
            lines[-1] += (" - |" if extra is None else f" {pct(extra['accuracy_mean'])} ± {pct(extra['accuracy_spread'])}"
                                                        f" ({c['global_verdict']}) |")
    counts = {v: sum(c["verdict"] == v for c in summary["comparisons"]) for v in ("better", "tie", "worse", "one seed")}
    lines += ["", f"keras-prune better: {counts['better']}, tie: {counts['tie']}, worse: {counts['worse']}, "
                  f"not judged (one seed): {counts['one seed']} (of {len(summary['comparisons'])} model x sparsity pairs)."]
    if has_global:
        lines += ["", "Global ranking is a keras-prune option tfmot lacks (`prune_low_magnitude(..., scope=\"global\")`): "
                      "one magnitude ranking across all layers, so small layers such as the 10-way output keep more "
                      "weights, as in Han et al. It is not part of the like-for-like verdict; the harness runs it "
                      "with `--tools keras_prune_global` (here: "
                      f"{', '.join(sorted({r['model'] for r in summary['rows'] if r['tool'] == 'keras_prune_global'}))})."]
    return "\n".join(lines)


def _han(summary: dict) -> str:
    rows = _index(summary["rows"])
    lines = ["## Han et al. 2015 on MNIST", "",
             "Han et al. report pruning 12x (8% of the weights kept, about 92% sparsity) with no loss. "
             "Error (%) = 100 - accuracy; ours are means over seeds.", "",
             "| model | Han dense | Han pruned 12x | our dense (pretrained) | plain fine-tuned | sparsity | "
             "keras-prune | tfmot | keras-prune, global ranking |",
             "|---|---|---|---|---|---|---|---|---|"]
    for model, han in HAN_2015.items():
        if model not in summary["dense"]:
            continue

        def err(sparsity, tool, model=model):
            row = rows.get((model, sparsity, tool))
            return "-" if row is None else f"{100 * (1 - row['accuracy_mean']):.2f}"

        for sparsity, label in ((0.92, "92% (12x)"), (0.95, "95% (20x)")):
            lines.append(f"| {model} | {han['dense_error']:.2f} | {han['pruned_error']:.2f} | "
                         f"{100 * (1 - summary['dense'][model]['accuracy_mean']):.2f} | {err(0.0, 'keras_prune')} | "
                         f"{label} | {err(sparsity, 'keras_prune')} | {err(sparsity, 'tfmot')} | "
                         f"{err(sparsity, 'keras_prune_global')} |")
    lines += ["", "Han et al. choose each layer's sparsity by its sensitivity and retrain far longer than the "
                  "budget here: LeNet-300-100 keeps 8%, 9% and 26% of its three layers, LeNet-5 keeps 66% of its "
                  "500-weight first convolution and 8% of its 400K-weight Dense layer. The like-for-like setting "
                  "prunes every layer to the same target, which is tfmot's behaviour; global ranking gives the "
                  "small layers more weights, as Han et al. do."]
    return "\n".join(lines + _han_longer(summary.get("longer_budget", [])))


def _han_longer(cells: list[dict]) -> list[str]:
    """Error (%) of the longer fine-tuning run, one seed, against its own plain fine-tuning."""
    plain = {c["model"]: c for c in cells if c["sparsity"] == 0}
    pruned = [c for c in cells if c["sparsity"] > 0 and c["model"] in plain]
    if not pruned:
        return []
    b = pruned[0]["budget"]
    lines = ["", f"With a longer budget ({b['epochs']} epochs of {b['epoch_samples']:,} images, seed "
                 f"{pruned[0]['seed']}; `{LONGER_BUDGET}` in benchmarks/results):", "",
             "| model | tool | sparsity | error (%) | plain fine-tuned error (%) | loss (pp) |", "|---|---|---|---|---|---|"]
    for c in sorted(pruned, key=lambda c: (c["model"], c["tool"], c["sparsity"])):
        base = plain[c["model"]]["accuracy"]
        lines.append(f"| {c['model']} | {TOOL_NAMES[c['tool']]} | {pct(c['sparsity'], 0)}% | "
                     f"{100 * (1 - c['accuracy']):.2f} | {100 * (1 - base):.2f} | {100 * (base - c['accuracy']):+.2f} |")
    return lines


def _loss(summary: dict) -> str:
    lines = ["## Where the accuracy loss begins", "",
             "Loss in percentage points against plain fine-tuning with the same budget (positive = worse).", ""]
    sparsities = sorted({r["sparsity"] for r in summary["rows"] if r["sparsity"] > 0})
    lines += ["| model | tool | " + " | ".join(f"{pct(s, 0)}%" for s in sparsities) + " | loss begins at |",
              "|---|---|" + "---|" * (len(sparsities) + 1)]
    for model, tools in summary["loss_begins"].items():
        for tool, info in tools.items():
            cells = [f"{100 * info['losses'][s]['loss']:+.2f}" if s in info["losses"] else "-" for s in sparsities]
            first = info["first_loss_at"]
            onset = f"{pct(first, 0)}%" if first is not None else (
                f"none up to {pct(max(info['losses']), 0)}%" if info["losses"] else "-")
            lines.append(f"| {model} | {TOOL_NAMES[tool]} | " + " | ".join(cells) +
                         f" | {onset} |")
    return "\n".join(lines)


def _timing(summary: dict) -> str:
    lines = ["## Training time", "",
             "Median seconds per epoch (first epoch excluded), wall and process CPU time, and the overhead "
             "of pruning: the ratio to the same tool's plain fine-tuning, run just before in the same process.", "",
             "| model | sparsity | keras-prune s/epoch (CPU) | tfmot s/epoch (CPU) | keras-prune overhead wall (CPU) "
             "| tfmot overhead wall (CPU) |", "|---|---|---|---|---|---|"]
    rows = _index(summary["rows"])
    for (model, sparsity, tool), ours in rows.items():
        theirs = rows.get((model, sparsity, "tfmot"))
        if tool != "keras_prune" or theirs is None:
            continue

        def ratio(row):
            if row["overhead_seconds"] is None:
                return "-"
            return f"{row['overhead_seconds']:.2f}x ({row['overhead_cpu_seconds']:.2f}x)"

        lines.append(f"| {model} | {pct(sparsity, 0)}% | {ours['epoch_seconds']:.2f} ({ours['epoch_cpu_seconds']:.2f}) | "
                     f"{theirs['epoch_seconds']:.2f} ({theirs['epoch_cpu_seconds']:.2f}) | "
                     f"{ratio(ours) if sparsity else '1 (baseline)'} | {ratio(theirs) if sparsity else '1 (baseline)'} |")
    lines += ["", "CPU-time overhead over all pruned cells of a model (median, and range over sparsities and seeds):", "",
              "| model | keras-prune | tfmot | keras-prune's overhead |", "|---|---|---|---|"]
    for model, o in summary["overhead"].items():
        ours, theirs = o["keras_prune"], o["tfmot"]
        lines.append(f"| {model} | {ours['median']:.2f}x ({ours['min']:.2f}-{ours['max']:.2f}) | "
                     f"{theirs['median']:.2f}x ({theirs['min']:.2f}-{theirs['max']:.2f}) | {o['keras_prune_verdict']} |")
    return "\n".join(lines)


def _interleaved(summary: dict) -> str:
    """The overhead measured side by side by overhead.py (absent until that has run)."""
    data = summary.get("interleaved_overhead")
    if data is None:
        return ""
    results = data["results"]
    lines = ["### Training overhead, measured side by side", "",
             f"The cells above run one after another, so a busy machine blurs their timings. "
             f"`benchmarks/tfmot_compare/overhead.py` measures each tool against plain `fit` on its own "
             f"Keras in one process: {data['model']}, batch {data['batch_size']}, {data['schedule']}, the "
             f"plain and two pruned models trained an epoch at a time in turn for {data['timed_epochs']} "
             "rounds; the overhead is the median over rounds of pruned epoch / plain epoch of the same round.",
             "", "| tool | Keras | frequency 100 | frequency 10 | plain s/epoch (median) |", "|---|---|---|---|---|"]
    for tool, r in results.items():
        plain = statistics.median(r["epoch_seconds"]["plain"])
        lines.append(f"| {TOOL_NAMES[tool]} | {r['keras']} | {r['ratios']['f100']:.2f}x | {r['ratios']['f10']:.2f}x | "
                     f"{plain:.2f} |")
    return "\n".join(lines)


def _interleaved_lower(summary: dict) -> bool | None:
    """Whether keras-prune's side-by-side overhead is below tfmot's at both frequencies."""
    data = summary.get("interleaved_overhead")
    if data is None:
        return None
    ours, theirs = data["results"]["keras_prune"]["ratios"], data["results"]["tfmot"]["ratios"]
    return all(ours[f] < theirs[f] for f in ours)


def _sizes(summary: dict) -> str:
    lines = ["## File sizes", "",
             "KiB of the stripped model, median over seeds. keras-prune: Keras 3 `.keras`, gzip -9 of it, and "
             "`.kpsparse` (exact float32 values). tfmot: `tf_keras` `.h5`, gzip -9 of it, and the `.kpsparse` "
             "of its weights loaded into the same Keras 3 model.", "",
             "| model | sparsity | keras-prune .keras | gzip | .kpsparse | tfmot .h5 | gzip | .kpsparse | "
             "pruned weights stored as -0.0, keras-prune / tfmot |",
             "|---|---|---|---|---|---|---|---|---|"]
    rows = _index(summary["rows"])
    for (model, sparsity, tool), ours in rows.items():
        theirs = rows.get((model, sparsity, "tfmot"))
        if tool != "keras_prune" or theirs is None:
            continue
        lines.append(f"| {model} | {pct(sparsity, 0)}% | {_kb(ours['keras_bytes'])} | {_kb(ours['keras_gzip_bytes'])} | "
                     f"{_kb(ours['sparse_bytes'])} | {_kb(theirs['h5_bytes'])} | {_kb(theirs['h5_gzip_bytes'])} | "
                     f"{_kb(theirs['sparse_bytes'])} | {_count(ours['negative_zeros'])} / "
                     f"{_count(theirs['negative_zeros'])} |")
    lines += ["", "Zeros stored as -0.0 (bytes `00 00 00 80`) break the runs of zero bytes gzip feeds on: "
                  "tfmot zeroes a weight by multiplying it with its mask, so every pruned negative weight "
                  "becomes -0.0. `.kpsparse` does not store pruned positions at all, so both tools' weights "
                  "give the same size there."]
    return "\n".join(lines)


def _count(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def _shortfalls(summary: dict) -> str:
    """Every place where keras-prune misses a target (accuracy >= tfmot's, overhead lower), plainly."""
    worse = [c for c in summary["comparisons"] if c["verdict"] == "worse"]
    lower = [c for c in summary["comparisons"] if c["verdict"] == "one seed" and c["difference"] < 0]
    overhead = {m: o for m, o in summary["overhead"].items() if o["keras_prune_verdict"] != "lower"}
    side_by_side = _interleaved_lower(summary)
    lines = ["## Where keras-prune is not better"]
    if not worse and not overhead and not lower and side_by_side is not False:
        return "\n".join(lines + ["", "Nowhere in this run: every accuracy is a tie or better, and keras-prune's "
                                  "training overhead is lower than tfmot's for every model."])
    lines.append("")
    for c in worse:
        lines.append(f"- Accuracy, {c['model']} at {pct(c['sparsity'], 0)}%: {pct(c['keras_prune'])}% vs "
                     f"tfmot's {pct(c['tfmot'])}% ({100 * c['difference']:+.2f} pp, seed spread {pct(c['spread'])} pp, "
                     f"{c['seeds']} seed{'s' if c['seeds'] > 1 else ''}).")
    if lower:
        lines.append("- Lower accuracy on a single seed (not judged: no spread to compare with): " + "; ".join(
            f"{c['model']} at {pct(c['sparsity'], 0)}% ({100 * c['difference']:+.2f} pp)" for c in lower) + ".")
    for model, o in overhead.items():
        lines.append(f"- Training overhead (CPU time), {model}: keras-prune {o['keras_prune']['median']:.2f}x vs tfmot "
                     f"{o['tfmot']['median']:.2f}x (medians; {o['keras_prune_verdict']}: the ranges "
                     f"{o['keras_prune']['min']:.2f}-{o['keras_prune']['max']:.2f} and "
                     f"{o['tfmot']['min']:.2f}-{o['tfmot']['max']:.2f} "
                     f"{'overlap' if o['keras_prune_verdict'] == 'within noise' else 'do not overlap'}; "
                     "cell timings, taken one after another).")
    if side_by_side is not None:
        results = summary["interleaved_overhead"]["results"]
        ours, theirs = results["keras_prune"]["ratios"], results["tfmot"]["ratios"]
        figures = (f"{ours['f100']:.2f}x / {ours['f10']:.2f}x vs {theirs['f100']:.2f}x / {theirs['f10']:.2f}x "
                   "at frequency 100 / 10")
        if side_by_side:
            lines += ["", f"Measured side by side (LeNet-300-100), keras-prune's overhead is lower than tfmot's: {figures}."]
        else:
            lines.append(f"- Measured side by side (LeNet-300-100), keras-prune's overhead is not lower than "
                         f"tfmot's at every frequency: {figures}.")
    return "\n".join(lines)
