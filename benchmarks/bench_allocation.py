"""Know before you prune: sensitivity analysis, per-layer allocation rules and budget search.

Three trained dense models, side by side in one run, each pruned one-shot (no fine-tuning) from
a fresh copy of its dense weights:

* the LeNet-5-style CNN on MNIST and the ResNet-style CNN on CIFAR-10 of bench_calibrated.py
  (every prunable kernel; metric: test accuracy on a fixed random subset of the test images),
* the character-level GPT-2 on Tiny Shakespeare of bench_transformers.py (the kernels of the
  transformer blocks, ``layers="transformer_layer"``; metric: validation loss in nats/char on
  a fixed random subset of the validation windows, lower is better).

The dense weights come from the caches of those benchmarks (nothing is retrained when cached).

1. Sensitivity analysis (`keras_prune.sensitivity`): each kernel pruned alone at
   50-95%, by magnitude (and, for the CNNs, by SparseGPT), timed; its JSON and plot are kept.
2. Allocation rules at 80% and 90% overall sparsity: uniform, global, ERK, OWL and
   sensitivity-based (`keras_prune.allocate`), each pruned by magnitude and by
   SparseGPT (`keras_prune.oneshot_prune`; 256 training images or 128 text windows of
   calibration, as bench_calibrated.py uses).
3. Budget search on the LeNet-5 CNN (`keras_prune.prune_to_budget`, at most 1 point of
   accuracy lost) for every rule, by magnitude and by SparseGPT.

    .venv/bin/python benchmarks/bench_allocation.py --quick           # smoke run, about 2 minutes
    .venv/bin/python benchmarks/bench_allocation.py --write-docs      # full run, ~20 min on 2 cores

Prints the tables and the targets (PASS/FAIL), writes benchmarks/results/allocation.json, the
figures docs/img/allocation_*.png (--quick: both in a temporary folder) and, with --write-docs,
the results section of docs/allocation.md and the README's line (between the allocation
markers, where the README has them). A leg that fails is reported as failed, with the reason,
and the other legs still run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
import tempfile
import textwrap
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "benchmarks"
RESULTS = HERE / "results"
DOCS = ROOT / "docs" / "allocation.md"
README = ROOT / "README.md"
IMAGES = ROOT / "docs" / "img"
BEGIN, END = "<!-- allocation:begin -->", "<!-- allocation:end -->"

MODELS = {"lenet5": "LeNet-5-style CNN, MNIST", "resnet": "ResNet-style CNN, CIFAR-10",
          "gpt2": "char GPT-2, Tiny Shakespeare"}
RULES = ("uniform", "global", "erk", "owl", "sensitivity")
METHODS = ("magnitude", "sparsegpt")
BUDGET_MODEL = "lenet5"

FULL = {"sweep": (0.5, 0.7, 0.8, 0.9, 0.95), "targets": (0.8, 0.9), "cnn_eval_images": 5000,
        "gpt2_eval_windows": 256, "cnn_calibration": 256, "sensitivity_methods": {
            "lenet5": ("magnitude", "sparsegpt"), "resnet": ("magnitude", "sparsegpt"), "gpt2": ("magnitude",)},
        "max_drop": 0.01, "tolerance": 0.01, "budget_high": 0.99, "cnn_batch": 250, "gpt2_batch": 32}
QUICK = {"sweep": (0.5, 0.9, 0.95), "targets": (0.8, 0.9), "cnn_eval_images": 500, "gpt2_eval_windows": 16,
         "cnn_calibration": 64, "sensitivity_methods": {
             "lenet5": ("magnitude", "sparsegpt"), "resnet": ("magnitude",), "gpt2": ("magnitude",)},
         "max_drop": 0.01, "tolerance": 0.05, "budget_high": 0.99, "cnn_batch": 250, "gpt2_batch": 16}


def sibling(name: str):
    """Another benchmark script of this folder, imported as a module (their imports are lazy)."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    return importlib.import_module(name)


bc = sibling("bench_calibrated")
log, error_text, fmt, report_fields = bc.log, bc.error_text, bc.fmt, bc.report_fields


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data",
                        help="folder holding mnist/, cifar10-jpg/ and tinyshakespeare/ (default: ../shared/data "
                             "relative to the repository root)")
    parser.add_argument("--cache-dir", type=Path, default=bc.CACHE,
                        help="trained dense weights shared with bench_calibrated.py and bench_transformers.py "
                             "(default: benchmarks/.cache)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: tiny models, data and sweeps; the numbers mean nothing")
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"comma-separated models to run (default: all of {','.join(MODELS)})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None,
                        help="JSON results file (default: benchmarks/results/allocation.json; with --quick, "
                             "allocation.json in a bench_allocation_quick folder of the temporary directory)")
    parser.add_argument("--image-dir", type=Path, default=None,
                        help="folder for the allocation_*.png figures (default: docs/img; with --quick, next to "
                             "the JSON file)")
    parser.add_argument("--write-docs", nargs="?", const=DOCS, default=None, type=Path, metavar="PATH",
                        help="also write the results section between the allocation markers of PATH (default: "
                             "docs/allocation.md; the markers are appended if missing) and, unless --quick or "
                             "PATH is not the default, the README's line if the README has the markers")
    parser.add_argument("--from-results", type=Path, default=None, metavar="JSON",
                        help="no measuring: print the tables of a results file this script wrote (and with "
                             "--write-docs, write the markdown from it)")
    args = parser.parse_args(argv)
    unknown = set(args.models.split(",")) - set(MODELS)
    if unknown:
        parser.error(f"--models takes a subset of {','.join(MODELS)}. Unknown: {','.join(sorted(unknown))}")
    return args


def settings_for(args) -> dict:
    return {**(QUICK if args.quick else FULL), "seed": args.seed, "quick": args.quick}


# -- the three models ---------------------------------------------------------------------------


def setup_model(name: str, args, settings: dict) -> dict:
    """A model to prune again and again (restored to its dense weights before each leg), its
    evaluation sample, calibration inputs, metric and the weights to prune."""
    import keras
    import numpy as np

    cargs = bc.parse_args(["--data-dir", str(args.data_dir), "--cache-dir", str(args.cache_dir),
                           "--seed", str(args.seed)] + (["--quick"] if args.quick else []))
    csettings = bc.settings_for(cargs)
    rng = np.random.default_rng(args.seed + 5)
    if name == "gpt2":
        setup = bc.gpt2_setup(cargs)
        x, y = setup["data"]["val_xy"]
        pick = np.sort(rng.permutation(len(x))[: settings["gpt2_eval_windows"]])
        bt = setup["bt"]
        return {
            "model": setup["dense"], "evaluation": (bt.as_inputs(x[pick]), y[pick]), "held_out": None,
            "calibration": bt.as_inputs(setup["calibration"]), "calibration_count": len(setup["calibration"]),
            "metric": lambda: keras.metrics.SparseCategoricalCrossentropy(from_logits=True, name="val_loss"),
            "layers": "transformer_layer", "batch_size": settings["gpt2_batch"], "units": "nats/char",
            "evaluation_count": len(pick), "evaluation_of": len(x),
            "description": (f"character-level GPT-2 ({setup['settings']['num_layers']} layers, width "
                            f"{setup['settings']['hidden_dim']}, {setup['dense'].count_params():,} parameters) "
                            "pretrained by bench_transformers.py")}
    setup = (bc.lenet_setup if name == "lenet5" else bc.resnet_setup)(cargs, csettings)
    order = rng.permutation(len(setup["y_test"]))  # CIFAR-10's test images come sorted by class
    count = settings["cnn_eval_images"]
    seen, rest = np.sort(order[:count]), np.sort(order[count: 2 * count])
    # The same draw of calibration images as bench_calibrated.py's run_cnn.
    draw = np.random.default_rng(args.seed + 3).permutation(len(setup["x_train"]))
    calibration = setup["x_train"][np.sort(draw[: settings["cnn_calibration"]])]
    return {
        "model": setup["dense"], "evaluation": (setup["x_test"][seen], setup["y_test"][seen]),
        "held_out": (setup["x_test"][rest], setup["y_test"][rest]), "calibration": calibration,
        "calibration_count": len(calibration),
        "metric": lambda: keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
        "layers": None, "batch_size": settings["cnn_batch"], "units": "accuracy",
        "evaluation_count": len(seen), "evaluation_of": len(setup["y_test"]), "description": setup["description"]}


def snapshot(model) -> list:
    import keras

    return [keras.ops.convert_to_numpy(v).copy() for v in model.weights]


def restore(model, weights: list) -> None:
    for variable, value in zip(model.weights, weights):
        variable.assign(value)


def measured_sparsity(model, keys) -> float:
    """Zeros among the weights named by ``keys`` (allocation keys), counted in the model."""
    import keras
    import numpy as np

    from keras_prune.oneshot import select_weights, weight_key

    zeros = total = 0
    for path, variable in select_weights(model):
        if weight_key(path, variable) in keys:
            values = keras.ops.convert_to_numpy(variable)
            zeros += int(np.count_nonzero(values == 0))
            total += values.size
    return zeros / total if total else float("nan")


def allocation_for(model, target: float, rule: str, setup: dict, sensitivity):
    """``allocate`` with the options ``rule`` uses (calibration inputs for OWL, curves for sensitivity)."""
    from keras_prune.allocation import allocate

    extra = {}
    if rule == "owl":
        extra = {"calibration_data": setup["calibration"], "samples": setup["calibration_count"],
                 "batch_size": setup["batch_size"]}
    elif rule == "sensitivity":
        extra = {"sensitivity": sensitivity}
    return allocate(model, target, rule=rule, layers=setup["layers"], **extra)


# -- the measurements ---------------------------------------------------------------------------


def run_sensitivity(name: str, setup: dict, settings: dict, images: Path) -> dict:
    from keras_prune.sensitivity import sensitivity

    out, results = {}, {}
    count = setup["evaluation_count"]
    for method in settings["sensitivity_methods"][name]:
        try:
            start = time.perf_counter()
            result = sensitivity(setup["model"], setup["evaluation"], sparsities=settings["sweep"], method=method,
                                 metric=setup["metric"](), layers=setup["layers"], samples=count,
                                 calibration_data=None if method == "magnitude" else setup["calibration"],
                                 calibration_samples=setup["calibration_count"], batch_size=setup["batch_size"],
                                 progress=False)
            seconds = time.perf_counter() - start
            plot = images / f"allocation_sensitivity_{name}{'' if method == 'magnitude' else '_' + method}.png"
            result.plot(plot)
            ranked = sorted(result.keys, key=result.score, reverse=True)
            out[method] = {"seconds": seconds, "evaluations": 1 + len(result.keys) * len(result.sparsities),
                           "weights": len(result.keys), "plot": relative(plot), "ranking": ranked,
                           "scores": {k: result.score(k) for k in result.keys},
                           "result": json.loads(result.to_json())}
            results[method] = result
            log(name, f"sensitivity ({method}): {len(result.keys)} weights x {len(result.sparsities)} sparsities in "
                      f"{seconds:.0f} s; most sensitive: {', '.join(ranked[:3])}")
        except Exception as error:  # reported; the rules that need it fail with the reason
            traceback.print_exc(file=sys.stderr)
            out[method] = {"error": error_text(error)}
            log(name, f"sensitivity ({method}): FAILED: {out[method]['error']}")
    return {"entries": out, "results": results}


def run_legs(name: str, setup: dict, settings: dict, dense: list, evaluator, baseline: float,
             curves: dict) -> list:
    import keras_prune

    model, legs = setup["model"], []
    for target in settings["targets"]:
        for method in METHODS:
            for rule in RULES:
                leg = {"target": target, "method": method, "rule": rule}
                source = method if method in curves else "magnitude"
                if rule == "sensitivity":
                    leg["sensitivity_method"] = source
                try:
                    restore(model, dense)
                    start = time.perf_counter()
                    plan = allocation_for(model, target, rule, setup, curves.get(source))
                    leg["allocate_seconds"] = time.perf_counter() - start
                    start = time.perf_counter()
                    report = keras_prune.oneshot_prune(
                        model, None if method == "magnitude" else setup["calibration"], method=method,
                        sparsity=plan, layers=setup["layers"], samples=setup["calibration_count"])
                    leg["prune_seconds"] = time.perf_counter() - start
                    leg["metric"] = evaluator(model)
                    leg["drop"] = evaluator.drop(baseline, leg["metric"])
                    leg.update(allocated=plan.overall, sparsity=measured_sparsity(model, set(plan)),
                               allocation=dict(plan), **report_fields(report))
                except Exception as error:  # one failed leg must not stop the others
                    traceback.print_exc(file=sys.stderr)
                    leg["error"] = error_text(error)
                    log(name, f"{method} {rule} {target:.0%}: FAILED: {leg['error']}")
                else:
                    log(name, f"{method} {rule} {target:.0%}: {evaluator.name} {leg['metric']:.4f} "
                              f"(drop {leg['drop']:+.4f}), sparsity {leg['sparsity']:.4f}, "
                              f"pruned in {leg['prune_seconds']:.1f} s")
                legs.append(leg)
    restore(model, dense)
    return legs


def run_budget(setup: dict, settings: dict, dense: list, curves: dict) -> list:
    from keras_prune.budget import prune_to_budget
    from keras_prune.evaluation import Evaluator

    model, rows = setup["model"], []
    held = Evaluator(model, setup["held_out"], metric=setup["metric"](), batch_size=setup["batch_size"])
    held_dense = held()
    for method in METHODS:
        for rule in RULES:
            row = {"method": method, "rule": rule}
            try:
                restore(model, dense)
                start = time.perf_counter()
                report = prune_to_budget(
                    model, setup["evaluation"], max_drop=settings["max_drop"], metric=setup["metric"](),
                    method=method, rule=rule, calibration_data=setup["calibration"],
                    sensitivity=curves.get(method, curves.get("magnitude")) if rule == "sensitivity" else None,
                    layers=setup["layers"], high=settings["budget_high"], tolerance=settings["tolerance"],
                    samples=setup["evaluation_count"], calibration_samples=setup["calibration_count"],
                    batch_size=setup["batch_size"])
                row["seconds"] = time.perf_counter() - start
                row.update(reached=float(report.settings["reached_sparsity"]),
                           dense_metric=float(report.settings["dense_metric"]), history=list(report.history),
                           final_sparsity=report_fields(report)["reported_sparsity"],
                           held_out_dense=held_dense, held_out=held())
            except Exception as error:  # one failed search must not stop the others
                traceback.print_exc(file=sys.stderr)
                row["error"] = error_text(error)
                log("budget", f"{method} {rule}: FAILED: {row['error']}")
            else:
                log("budget", f"{method} {rule}: reached {row['reached']:.4f} in {len(row['history'])} probes, "
                              f"{row['seconds']:.0f} s; held-out accuracy {row['held_out']:.4f} "
                              f"(dense {held_dense:.4f})")
            rows.append(row)
    restore(model, dense)
    return rows


def run_model(name: str, args, settings: dict, images: Path) -> dict:
    from keras_prune.evaluation import Evaluator

    setup = setup_model(name, args, settings)
    model = setup["model"]
    dense = snapshot(model)
    evaluator = Evaluator(model, setup["evaluation"], metric=setup["metric"](), batch_size=setup["batch_size"])
    baseline = evaluator()
    log(name, f"dense: {evaluator.name} {baseline:.4f} on {setup['evaluation_count']:,} examples")
    out = {"description": setup["description"], "metric": evaluator.name, "units": setup["units"],
           "higher_is_better": evaluator.higher_is_better, "dense_metric": baseline,
           "evaluation_examples": setup["evaluation_count"], "evaluation_of": setup["evaluation_of"],
           "calibration_examples": setup["calibration_count"], "layers": setup["layers"]}
    start = time.perf_counter()
    sens = run_sensitivity(name, setup, settings, images)
    out["sensitivity"] = sens["entries"]
    out["legs"] = run_legs(name, setup, settings, dense, evaluator, baseline, sens["results"])
    if name == BUDGET_MODEL:
        out["budget"] = run_budget(setup, settings, dense, sens["results"])
    out["seconds"] = time.perf_counter() - start
    return out


# -- reading the results ------------------------------------------------------------------------


def leg_of(res: dict, target: float, method: str, rule: str) -> dict | None:
    for leg in res.get("legs", []):
        if abs(leg["target"] - target) < 1e-9 and leg["method"] == method and leg["rule"] == rule:
            return leg
    return None


def better(res: dict, a: float, b: float) -> bool:
    return a > b if res["higher_is_better"] else a < b


def best_rule(res: dict, target: float, method: str, exclude=("global",)) -> dict | None:
    """The leg with the best metric among the rules not in ``exclude`` (None if none measured)."""
    found = [leg for rule in RULES if rule not in exclude
             for leg in [leg_of(res, target, method, rule)] if leg and "metric" in leg]
    if not found:
        return None
    pick = found[0]
    for leg in found[1:]:
        if better(res, leg["metric"], pick["metric"]):
            pick = leg
    return pick


def value_text(res: dict, value: float) -> str:
    return f"{value:.2%}" if res["higher_is_better"] else f"{value:.4f}"


def targets(results: dict) -> list[dict]:
    rows = []

    def add(text, measured, passed, why=None):
        verdict = ("PASS" if passed else "FAIL") if measured is not None else f"FAIL (not measured: {why})"
        rows.append({"target": text, "measured": measured if measured is not None else "-", "passed": bool(passed),
                     "verdict": verdict})

    models = results.get("models", {})
    top = max(results["settings"]["targets"])
    for name, label in MODELS.items():
        if name not in results.get("models_run", MODELS):
            continue
        res = models.get(name, {})
        text = f"{label}, {top:.0%}: the best allocation beats global ranking (either method)"
        parts, passed = [], False
        for method in METHODS:
            best, base = best_rule(res, top, method), leg_of(res, top, method, "global")
            if best and base and "metric" in base:
                wins = better(res, best["metric"], base["metric"])
                passed |= wins
                parts.append(f"{method}: {best['rule']} {value_text(res, best['metric'])} vs global "
                             f"{value_text(res, base['metric'])}")
        why = res.get("error") or next((leg["error"] for leg in res.get("legs", []) if "error" in leg), "not run")
        add(text, "; ".join(parts) if parts else None, passed, why)
    if BUDGET_MODEL in results.get("models_run", MODELS):
        res = models.get(BUDGET_MODEL, {})
        budget = res.get("budget", [])
        points = 100 * results["settings"]["max_drop"]
        for method in METHODS:
            text = (f"{MODELS[BUDGET_MODEL]}, budget {points:g} point, {method}: the best rule reaches >= 10 points "
                    "more sparsity than uniform")
            got = {row["rule"]: row for row in budget if row["method"] == method and "reached" in row}
            others = {rule: row for rule, row in got.items() if rule != "uniform"}
            if "uniform" in got and others:
                rule = max(others, key=lambda r: others[r]["reached"])
                gap = 100 * (others[rule]["reached"] - got["uniform"]["reached"])
                add(text, f"{rule} {others[rule]['reached']:.1%} vs uniform {got['uniform']['reached']:.1%} "
                          f"({gap:+.1f} pt)", gap >= 10 - 1e-9)
            else:
                why = next((row["error"] for row in budget if row["method"] == method and "error" in row), None)
                add(text, None, False, why or res.get("error") or "not run")
    return rows


def failed_cell(error: str) -> str:
    """A table cell for a failure: the reason, cut short (the JSON file has it whole)."""
    text = error.replace("|", "/")
    return f"FAILED: {text if len(text) <= 90 else text[:87] + '...'}"


def legs_table(results: dict, name: str) -> str:
    res = results.get("models", {}).get(name)
    if not res:
        return f"({MODELS[name]}: not run)"
    if "error" in res:
        return f"{MODELS[name]}: FAILED: {res['error']}"
    header = ["overall sparsity", "method", *RULES]
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
           f"| dense | - | {' | '.join([value_text(res, res['dense_metric'])] * len(RULES))} |"]
    for target in results["settings"]["targets"]:
        for method in METHODS:
            best = best_rule(res, target, method, exclude=())
            cells = [f"{target:.0%}", method]
            for rule in RULES:
                leg = leg_of(res, target, method, rule)
                if leg is None:
                    cells.append("not run")
                elif "error" in leg:
                    cells.append(failed_cell(leg["error"]))
                else:
                    text = value_text(res, leg["metric"])
                    cells.append(f"**{text}**" if best is leg else text)
            out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def sensitivity_table(results: dict) -> str:
    out = ["| model | method | weights | sparsities | evaluations | seconds | most sensitive (score) | "
           "least sensitive |", "|---|---|---|---|---|---|---|---|"]
    for name, label in MODELS.items():
        for method, entry in results.get("models", {}).get(name, {}).get("sensitivity", {}).items():
            if "error" in entry:
                out.append(f"| {label} | {method} | {failed_cell(entry['error'])} | | | | | |")
                continue
            ranked, scores = entry["ranking"], entry["scores"]
            out.append(f"| {label} | {method} | {entry['weights']} | {len(results['settings']['sweep'])} | "
                       f"{entry['evaluations']} | {entry['seconds']:.0f} | `{ranked[0]}` ({scores[ranked[0]]:.3g}) | "
                       f"`{ranked[-1]}` ({scores[ranked[-1]]:.3g}) |")
    return "\n".join(out)


def allocation_table(results: dict, name: str, target: float) -> str:
    """Per-weight sparsities each rule chose at ``target`` (magnitude legs), for small models."""
    res = results.get("models", {}).get(name, {})
    plans = {rule: (leg_of(res, target, "magnitude", rule) or {}).get("allocation") for rule in RULES}
    keys = next((list(plan) for plan in plans.values() if plan), [])
    if not keys:
        return ""
    out = ["| weight | " + " | ".join(RULES) + " |", "|---|" + "---|" * len(RULES)]
    for key in keys:
        out.append(f"| `{key}` | " + " | ".join(fmt((plans[r] or {}).get(key), ".1%") for r in RULES) + " |")
    return "\n".join(out)


def budget_table(results: dict) -> str:
    res = results.get("models", {}).get(BUDGET_MODEL, {})
    budget = res.get("budget")
    if not budget:
        return "(the budget search did not run)"
    out = ["| method | rule | sparsity reached | probes | accuracy on the search images | accuracy on other test "
           "images (dense) | seconds |", "|---|---|---|---|---|---|---|"]
    for row in budget:
        if "error" in row:
            out.append(f"| {row['method']} | {row['rule']} | {failed_cell(row['error'])} | | | | |")
            continue
        within = [p for p in row["history"] if p["within"]]
        final = max(within, key=lambda p: p["sparsity"]) if within else None
        seen = f"{final['metric']:.2%}" if final else f"{row['dense_metric']:.2%} (dense)"
        out.append(f"| {row['method']} | {row['rule']} | {row['reached']:.1%} | {len(row['history'])} | {seen} | "
                   f"{row['held_out']:.2%} ({row['held_out_dense']:.2%}) | {row['seconds']:.0f} |")
    return "\n".join(out)


def tables(results: dict) -> str:
    out = []
    for name, label in MODELS.items():
        if name not in results.get("models_run", MODELS):
            continue
        res = results.get("models", {}).get(name, {})
        what = ("validation loss, nats/char (lower is better)" if res.get("units") == "nats/char"
                else "test accuracy")
        out += [f"{label}: {what} after one-shot pruning by each allocation rule (best of each row in bold):", "",
                legs_table(results, name), ""]
    out += ["Sensitivity analysis (each weight pruned alone; score: area under its drop curve):", "",
            sensitivity_table(results), ""]
    if BUDGET_MODEL in results.get("models_run", MODELS):
        out += [f"Budget search on the {MODELS[BUDGET_MODEL]}, at most {100 * results['settings']['max_drop']:g} "
                "point of accuracy lost:", "", budget_table(results), ""]
    out += ["| target | measured | result |", "|---|---|---|"]
    for row in targets(results):
        out.append(f"| {row['target']} | {row['measured']} | {row['verdict'].replace('|', '/')} |")
    return "\n".join(out)


def reading(results: dict) -> str:
    lines = []
    for name, label in MODELS.items():
        res = results.get("models", {}).get(name, {})
        if "legs" not in res:
            continue
        for target in results["settings"]["targets"]:
            cells = []
            for method in METHODS:
                best = best_rule(res, target, method, exclude=())
                if best:
                    cells.append(f"{method}: {best['rule']} ({value_text(res, best['metric'])})")
            if cells:
                lines.append(f"{label}, {target:.0%}: best rule by " + ", ".join(cells) + ".")
        off = [f"{leg['method']} {leg['rule']} {leg['target']:.0%} ({leg['sparsity']:.4f})" for leg in res["legs"]
               if "sparsity" in leg and abs(leg["sparsity"] - leg["target"]) > 0.005]
        if off:
            lines.append(f"{label}: legs away from their overall sparsity: " + ", ".join(off) + ".")
    failed = [f"{MODELS[n]} {leg['method']} {leg['rule']} {leg['target']:.0%}"
              for n, res in results.get("models", {}).items() for leg in res.get("legs", []) if "error" in leg]
    if failed:
        lines.append("Legs that failed (see the tables for the reason): " + ", ".join(failed) + ".")
    rows = targets(results)
    met = [row for row in rows if row["passed"]]
    lines.append(f"Targets met: {len(met)} of {len(rows)}.")
    return "\n".join(f"* {line}" for line in lines)


# -- figures --------------------------------------------------------------------------------


def relative(path: Path) -> str:
    where = Path(path).resolve()
    return str(where.relative_to(ROOT) if where.is_relative_to(ROOT) else where)


def plot_rules(results: dict, path: Path) -> None:
    """Metric against rule, one panel per model: a bar per method and overall sparsity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = {n: r for n, r in results.get("models", {}).items() if "legs" in r}
    if not models:
        return
    fig, axes = plt.subplots(1, len(models), figsize=(5.3 * len(models), 4.2), squeeze=False)
    combos = [(t, m) for t in results["settings"]["targets"] for m in METHODS]
    colors = {"magnitude": "tab:blue", "sparsegpt": "tab:red"}
    width = 0.8 / len(combos)
    for ax, (name, res) in zip(axes[0], models.items()):
        scale = 100 if res["higher_is_better"] else 1
        for i, (target, method) in enumerate(combos):
            values = [(leg_of(res, target, method, r) or {}).get("metric", math.nan) * scale for r in RULES]
            ax.bar([j + (i - (len(combos) - 1) / 2) * width for j in range(len(RULES))], values, width,
                   color=colors[method], alpha=0.45 if target == min(results["settings"]["targets"]) else 0.95,
                   label=f"{method}, {target:.0%}")
        ax.axhline(res["dense_metric"] * scale, color="grey", lw=1, ls="--", label="dense")
        ax.set_xticks(range(len(RULES)), RULES)
        ax.set_title(MODELS[name])
        ax.set_ylabel("test accuracy (%)" if res["higher_is_better"] else "validation loss (nats/char, lower is "
                                                                           "better)")
        if not res["higher_is_better"]:
            finite = [leg["metric"] for leg in res["legs"] if "metric" in leg and math.isfinite(leg["metric"])]
            if finite:
                ax.set_ylim(0.9 * res["dense_metric"], min(max(finite) * 1.05, 3 * res["dense_metric"]))
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize="x-small")
    fig.suptitle("One-shot pruning, no fine-tuning: the same overall sparsity spread by each rule")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- markdown --------------------------------------------------------------------------------


def command_line(args) -> str:
    return sibling("bench_transformers").rerun_command("bench_allocation.py", args, parse_args([]),
                                                       ("models", "seed"))


def section(results: dict, docs: Path) -> str:
    s, env = results["settings"], results["environment"]
    models = results.get("models", {})
    described = []
    for name, res in models.items():
        if "description" not in res:
            continue
        unit = (f"{res['evaluation_examples']:,} of the {res['evaluation_of']:,} validation windows of 128 characters"
                if res["units"] == "nats/char" else
                f"a fixed random draw of {res['evaluation_examples']:,} of the {res['evaluation_of']:,} test images")
        described.append(f"{MODELS[name]}: {res['description']}; dense {res['metric']} "
                         f"{value_text(res, res['dense_metric'])} on {unit}; {res['calibration_examples']} "
                         "calibration examples from the training data"
                         + (", the kernels of the transformer blocks only" if res.get("layers") else
                            ", every prunable kernel"))
    lib = results.get("library", {})
    bullets = [
        "* Models (the dense weights of bench_calibrated.py and bench_transformers.py, from their caches): "
        + "; ".join(described) + ".",
        f"* Sensitivity: each kernel pruned alone at {', '.join(f'{x:.0%}' for x in s['sweep'])}, one-shot, the "
        "metric measured on the same sample as everything else. Allocation: the overall sparsity is exact over the "
        "pruned kernels (the measured share of zeros is in the JSON file); the sensitivity rule uses the curves of "
        "the same pruning method where they were measured, else the magnitude curves. OWL uses its defaults "
        "(threshold 5, range 0.08) and the calibration examples.",
        f"* Budget search: bisection on the overall sparsity between 0 and {s['budget_high']:g} (lowered to the "
        "highest target a rule can reach, such as the end of the sensitivity curves) until the bracket is "
        f"{s['tolerance']:g} wide, at most {100 * s['max_drop']:g} point of accuracy lost on the same test images "
        "as the tables; the last column checks the pruned model on as many other test images it never saw.",
        f"* keras-prune at commit {lib.get('commit', '?')}"
        + (" with uncommitted changes" if lib.get("edited_since_commit") else "")
        + f" (sources digest {lib.get('sources', '?')}). One seed ({s['seed']}). Machine: {env['cpus']} CPU cores "
        f"(load average {env['load_average'][0]:.1f} at the start), Keras {env['keras']}, TensorFlow "
        f"{env['tensorflow']}, keras-hub {env['keras_hub']}. Wall time of the run: "
        f"{results['total_seconds'] / 60:.1f} min.",
    ]
    lines = ["## Results: sensitivity, allocation rules and budget search", "",
             textwrap.fill("`benchmarks/bench_allocation.py` prunes fresh copies of the same trained dense weights "
                           "once (no fine-tuning) and measures them side by side in one run:", 100),
             "", "```", results.get("command", ".venv/bin/python benchmarks/bench_allocation.py --write-docs"),
             "```", "", "Setup:", ""]
    lines += [textwrap.fill(b, 100, subsequent_indent="  ", break_long_words=False, break_on_hyphens=False)
              for b in bullets]
    lines += ["", tables(results), ""]
    for name in models:
        table = allocation_table(results, name, max(s["targets"]))
        if table and len(table.splitlines()) <= 14:
            lines += [f"What each rule gave each kernel of the {MODELS[name]} at {max(s['targets']):.0%} "
                      "(magnitude legs):", "", table, ""]
    images = results.get("images", {})
    if images.get("rules"):
        lines += [f"![metric by allocation rule]({os.path.relpath(ROOT / images['rules'], docs.parent)})", ""]
    for name, res in models.items():
        for method, entry in res.get("sensitivity", {}).items():
            if entry.get("plot"):
                lines += [f"![sensitivity of the {MODELS[name]} ({method})]"
                          f"({os.path.relpath(ROOT / entry['plot'], docs.parent)})", ""]
    lines += ["Reading:", "", reading(results), "",
              f"The numbers are also written to `{results.get('output', 'benchmarks/results/allocation.json')}`."]
    return "\n".join(lines)


def readme_line(results: dict) -> str:
    parts = []
    top = max(results["settings"]["targets"])
    for name, res in results.get("models", {}).items():
        if "legs" not in res:
            continue
        cells = []
        for method in METHODS:
            best, base = best_rule(res, top, method), leg_of(res, top, method, "global")
            if best and base and "metric" in base:
                cells.append(f"{method} {best['rule']} {value_text(res, best['metric'])} vs global "
                             f"{value_text(res, base['metric'])}")
        if cells:
            measure = "test accuracy" if res["higher_is_better"] else "validation loss"
            parts.append(f"{MODELS[name]} at {top:.0%}, {measure}: " + ", ".join(cells))
    budget = results.get("models", {}).get(BUDGET_MODEL, {}).get("budget", [])
    reached = []
    for method in METHODS:
        got = {row["rule"]: row["reached"] for row in budget if row["method"] == method and "reached" in row}
        if "uniform" in got and len(got) > 1:
            rule = max((r for r in got if r != "uniform"), key=got.get)
            reached.append(f"{method} reaches {got[rule]:.0%} with {rule} allocation against {got['uniform']:.0%} "
                           "uniform")
    if reached:
        parts.append("within 1 point of accuracy on LeNet-5, " + ", ".join(reached))
    body = "; ".join(parts) if parts else "not measured yet"
    command = results.get("command", ".venv/bin/python benchmarks/bench_allocation.py --write-docs")
    text = (f"**Know before you prune** (sensitivity analysis, per-layer allocation, budget search; `{command}`, "
            f"[docs/allocation.md](docs/allocation.md)): {body}.")
    return textwrap.fill(text, 100, break_long_words=False, break_on_hyphens=False)


def write_docs(results: dict, args) -> None:
    if not args.write_docs:
        return
    target = Path(args.write_docs)
    bc.replace_between_markers(target, section(results, target), markers=(BEGIN, END))
    print(f"wrote the results section of {target}")
    if target.resolve() == DOCS.resolve() and not results["settings"]["quick"]:
        bc.replace_between_markers(README, readme_line(results), anchor="**File size**", markers=(BEGIN, END))
        print(f"wrote the allocation line of {README}")


# -- main ------------------------------------------------------------------------------------


def main(argv=None) -> dict:
    """Runs the benchmark; returns the results (with the markdown tables under ``"table"``)."""
    args = parse_args(argv)
    bt = sibling("bench_transformers")
    if args.from_results:
        results = json.loads(args.from_results.read_text())
        results["table"] = tables(results)
        print(results["table"])
        print()
        print(reading(results))
        write_docs(results, args)
        return results
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    start = time.perf_counter()
    settings = settings_for(args)
    bt.import_library()  # one version of keras_prune for the whole run
    scratch = Path(tempfile.gettempdir()) / "bench_allocation_quick"
    output = args.output or (scratch if args.quick else RESULTS) / "allocation.json"
    images = args.image_dir or (output.parent if args.quick else IMAGES)
    images.mkdir(parents=True, exist_ok=True)
    names = args.models.split(",")
    results = {"settings": settings, "environment": bt.environment(), "command": command_line(args),
               "models_run": [n for n in MODELS if n in names], "library": bc.library_version(), "models": {}}
    for name in results["models_run"]:
        try:
            results["models"][name] = run_model(name, args, settings, images)
        except Exception as error:  # reported; the other models still run
            traceback.print_exc(file=sys.stderr)
            results["models"][name] = {"error": error_text(error)}
            log(name, f"FAILED: {results['models'][name]['error']}")
    try:
        plot_rules(results, images / "allocation_rules.png")
        results["images"] = {"rules": relative(images / "allocation_rules.png")}
    except Exception as error:  # only the figure is lost
        traceback.print_exc(file=sys.stderr)
        log("plot", f"FAILED: {error_text(error)}")
    results["total_seconds"] = time.perf_counter() - start
    results["environment"]["load_average_end"] = list(os.getloadavg())
    results["targets"] = targets(results)
    results["table"] = tables(results)
    print()
    print(results["table"])
    print()
    print(reading(results))
    return bt.save_results(results, output, lambda: write_docs(results, args), bc.to_json)


if __name__ == "__main__":
    main()
