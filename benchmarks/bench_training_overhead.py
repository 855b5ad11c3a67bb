"""Training-time overhead of gradual pruning vs plain `fit`, measured side by side.

LeNet-300-100 (784-300-100-10 Dense, ReLU) on the full MNIST, batch 128, same seed, data and
initial weights for every run. Three variants run in alternation (plain, frequency=100,
frequency=10, plain, ...) so that load from other processes hits them alike:

* plain: `model.fit` on the dense model;
* f100 / f10: `prune_low_magnitude` with PolynomialDecay(0 -> 0.9) updating the masks every
  100 / 10 steps over the whole run, trained with `UpdatePruningStep`.

Per-epoch wall time is recorded by a callback; the first epoch of each run is skipped (it
includes tracing). The figures are the medians over all kept epochs, and their ratios to
plain (targets: <= 1.05x at frequency 100, <= 1.15x at frequency 10); the same for the
process CPU time per epoch, which other jobs on a shared machine disturb less. One more, instrumented
run per frequency splits the extra time into the callback's Python work per batch, the mask
recomputations, and the rest (inside the compiled train step: mask constraints, step counter).
It also prints each pruned model's final sparsity (the target is 0.9).

Writes benchmarks/results/overhead.json and overhead.png.

Example:
    .venv/bin/python benchmarks/bench_training_overhead.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import keras

import keras_prune
from keras_prune import masks
from keras_prune.datasets import load_idx_dataset
from keras_prune.demo import count_prunable, lenet_300_100
from keras_prune.io import atomic_write

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
VARIANTS = {"plain": None, "f100": 100, "f10": 10}
TARGETS = {"f100": 1.05, "f10": 1.15}
FINAL_SPARSITY = 0.9


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data",
                        help="folder holding mnist/ (default: ../shared/data from the repository root)")
    parser.add_argument("--repeats", type=int, default=5, help="rounds of (plain, f100, f10) (default: 5)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run; the first is not timed (default: 4)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=RESULTS / "overhead.json")
    return parser.parse_args()


class EpochTimer(keras.callbacks.Callback):
    """Records the wall time and the process CPU time (all threads) of every epoch.

    CPU time is what this process spent, whatever else runs on the machine, so its ratios
    are steadier than wall-time ratios on a shared machine.
    """

    def on_train_begin(self, logs=None):
        self.seconds, self.cpu_seconds = [], []

    def on_epoch_begin(self, epoch, logs=None):
        self._start, self._cpu_start = time.perf_counter(), time.process_time()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)
        self.cpu_seconds.append(time.process_time() - self._cpu_start)


class TimedUpdatePruningStep(keras_prune.UpdatePruningStep):
    """Times its per-batch hooks, split by whether the masks changed; skips the first epoch."""

    def on_epoch_begin(self, epoch, logs=None):
        if epoch <= 1:  # the first epoch includes tracing and is not counted
            self.hook_seconds = self.update_seconds = 0.0
            self.batches = self.updates = 0

    def on_train_batch_begin(self, batch, logs=None):
        start = time.perf_counter()
        updating = any(w.pruning_schedule.should_update(self.step) for w in self._wrappers)
        super().on_train_batch_begin(batch, logs)
        elapsed = time.perf_counter() - start
        if updating:
            self.update_seconds += elapsed
            self.updates += 1
        else:
            self.hook_seconds += elapsed
        self.batches += 1

    def on_train_batch_end(self, batch, logs=None):
        start = time.perf_counter()
        super().on_train_batch_end(batch, logs)
        self.hook_seconds += time.perf_counter() - start


def build(frequency: int | None, seed: int, total_steps: int):
    """The model for one variant, compiled; pruned when ``frequency`` is set."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    model = lenet_300_100(seed)
    if frequency is not None:
        end_step = max(frequency, (total_steps - 1) // frequency * frequency)  # through the last epoch
        schedule = keras_prune.PolynomialDecay(0.0, FINAL_SPARSITY, 0, end_step, frequency=frequency)
        model = keras_prune.prune_low_magnitude(model, pruning_schedule=schedule)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def train(data, frequency, args, update_step=None) -> dict:
    """One run: per-epoch seconds, test accuracy and (pruned) final sparsity."""
    steps_per_epoch = -(-len(data["x_train"]) // args.batch_size)
    model = build(frequency, args.seed, args.epochs * steps_per_epoch)
    timer = EpochTimer()
    callbacks = [timer]
    if frequency is not None:
        callbacks.insert(0, update_step or keras_prune.UpdatePruningStep())
    model.fit(data["x_train"], data["y_train"], batch_size=args.batch_size, epochs=args.epochs,
              callbacks=callbacks, verbose=0)
    final = keras_prune.strip_pruning(model) if frequency is not None else model
    nonzero, total = count_prunable(final)
    logits = keras.ops.convert_to_numpy(final(data["x_test"]))  # predict() would retrace per model
    return {
        "epoch_seconds": timer.seconds,
        "epoch_cpu_seconds": timer.cpu_seconds,
        "accuracy": float((logits.argmax(-1) == data["y_test"]).mean()),
        "sparsity": 1.0 - nonzero / total,
    }


def profile(data, frequency, args, plain_epoch: float) -> dict:
    """Where a pruned run's extra time goes, per batch, from one instrumented run.

    The rest (extra time minus the callback's) is spent inside the compiled train step.
    """
    step = TimedUpdatePruningStep()
    run = train(data, frequency, args, update_step=step)
    wall = sum(run["epoch_seconds"][1:])
    extra = wall - plain_epoch * (args.epochs - 1)
    return {
        "one_mask_update_ms": mask_update_breakdown(step._wrappers),
        "wall_seconds": wall,
        "batches": step.batches,
        "mask_updates": step.updates,
        "callback_us_per_batch": 1e6 * step.hook_seconds / step.batches,
        "mask_update_ms_each": 1e3 * step.update_seconds / max(1, step.updates),
        "mask_update_us_per_batch": 1e6 * step.update_seconds / step.batches,
        "extra_us_per_batch_vs_plain": 1e6 * extra / step.batches,
        "in_step_us_per_batch_estimate": 1e6 * (extra - step.hook_seconds - step.update_seconds) / step.batches,
    }


def mask_update_breakdown(wrappers, repeats: int = 5) -> dict:
    """Milliseconds of one mask update of all wrappers, split into its three stages."""
    stages = {"read_weights_and_score": [], "compute_masks": [], "assign_masks_and_zero": []}
    sparsity = FINAL_SPARSITY / 2
    for _ in range(repeats):
        times = dict.fromkeys(stages, 0.0)
        for wrapper in wrappers:
            start = time.perf_counter()
            scores = wrapper.scores()
            scored = time.perf_counter()
            keep = [masks.pattern_mask(score, sparsity) for score in scores]
            computed = time.perf_counter()
            wrapper.assign_masks(keep)
            assigned = time.perf_counter()
            times["read_weights_and_score"] += scored - start
            times["compute_masks"] += computed - scored
            times["assign_masks_and_zero"] += assigned - computed
        for name in stages:
            stages[name].append(1e3 * times[name])
    return {name: statistics.median(values) for name, values in stages.items()}


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(VARIANTS)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.boxplot([summary["runs"][n]["kept_epoch_seconds"] for n in names], tick_labels=names)
    for i, name in enumerate(names[1:], start=2):
        ratio = summary["ratios"][name]
        ax.annotate(f"{ratio:.3f}x (target {TARGETS[name]:.2f}x)", (i, summary["median_epoch_seconds"][name]),
                    textcoords="offset points", xytext=(0, 28), ha="center", fontsize=8)
    ax.set_ylabel("seconds per epoch")
    ax.set_title("LeNet-300-100, full MNIST, batch 128: pruning vs plain fit", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    args = parse_args()
    if args.epochs < 2 or args.repeats < 1:
        raise SystemExit("--epochs must be >= 2 (the first is not timed) and --repeats >= 1")
    data = load_idx_dataset(args.data_dir / "mnist")
    runs = {name: [] for name in VARIANTS}
    for round_ in range(args.repeats):
        for name, frequency in VARIANTS.items():
            run = train(data, frequency, args)
            runs[name].append(run)
            print(f"round {round_ + 1}/{args.repeats} {name:>5}: median epoch "
                  f"{statistics.median(run['epoch_seconds'][1:]):.3f} s "
                  f"(CPU {statistics.median(run['epoch_cpu_seconds'][1:]):.3f} s), "
                  f"accuracy {run['accuracy']:.4f}, sparsity {run['sparsity']:.4f}", flush=True)

    kept = {n: [s for run in runs[n] for s in run["epoch_seconds"][1:]] for n in VARIANTS}
    kept_cpu = {n: [s for run in runs[n] for s in run["epoch_cpu_seconds"][1:]] for n in VARIANTS}
    medians = {n: statistics.median(kept[n]) for n in VARIANTS}
    cpu_medians = {n: statistics.median(kept_cpu[n]) for n in VARIANTS}
    ratios = {n: medians[n] / medians["plain"] for n in TARGETS}
    cpu_ratios = {n: cpu_medians[n] / cpu_medians["plain"] for n in TARGETS}
    # Paired ratios: each pruned run against the plain run of its own round.
    paired = {n: [statistics.median(a["epoch_seconds"][1:]) / statistics.median(p["epoch_seconds"][1:])
                  for a, p in zip(runs[n], runs["plain"])] for n in TARGETS}
    summary = {
        "benchmark": "training overhead of gradual pruning vs plain fit",
        "model": "LeNet-300-100 (784-300-100-10 Dense, ReLU), Adam 1e-3",
        "data": "MNIST, 60,000 train images",
        "schedule": f"PolynomialDecay(0 -> {FINAL_SPARSITY}) over the whole run",
        "batch_size": args.batch_size, "epochs": args.epochs, "repeats": args.repeats, "seed": args.seed,
        "backend": keras.backend.backend(), "keras": keras.__version__, "python": platform.python_version(),
        "median_epoch_seconds": medians,
        "ratios": ratios,
        "median_epoch_cpu_seconds": cpu_medians,
        "cpu_ratios": cpu_ratios,
        "paired_ratios_per_round": paired,
        "targets": TARGETS,
        "meets_targets": {n: ratios[n] <= TARGETS[n] for n in TARGETS},
        "final_sparsity": {n: [r["sparsity"] for r in runs[n]] for n in TARGETS},
        "accuracy": {n: statistics.median(r["accuracy"] for r in runs[n]) for n in VARIANTS},
        "runs": {n: {"epoch_seconds": [r["epoch_seconds"] for r in runs[n]],
                     "epoch_cpu_seconds": [r["epoch_cpu_seconds"] for r in runs[n]],
                     "kept_epoch_seconds": kept[n]} for n in VARIANTS},
    }
    summary["profile"] = {n: profile(data, VARIANTS[n], args, medians["plain"]) for n in TARGETS}

    print(f"\nmedian seconds per epoch (first epoch skipped, {len(kept['plain'])} epochs each):")
    for name in VARIANTS:
        line = f"  {name:>5}: {medians[name]:.3f} s  accuracy {summary['accuracy'][name]:.4f}"
        if name in TARGETS:
            verdict = "meets" if summary["meets_targets"][name] else "MISSES"
            line += (f"  ratio {ratios[name]:.3f}x ({verdict} target {TARGETS[name]:.2f}x), "
                     f"CPU-time ratio {cpu_ratios[name]:.3f}x, per-round ratios "
                     f"{', '.join(f'{r:.2f}' for r in paired[name])}, "
                     f"final sparsity {min(summary['final_sparsity'][name]):.4f}")
        print(line)
    print("profile of one instrumented run per frequency (per batch):")
    for name, p in summary["profile"].items():
        print(f"  {name:>5}: callback {p['callback_us_per_batch']:.0f} us, mask updates "
              f"{p['mask_update_us_per_batch']:.0f} us ({p['mask_updates']} x {p['mask_update_ms_each']:.1f} ms), "
              f"in-step rest ~{p['in_step_us_per_batch_estimate']:.0f} us; total extra vs plain "
              f"~{p['extra_us_per_batch_vs_plain']:.0f} us")
        stages = ", ".join(f"{k} {v:.1f} ms" for k, v in p["one_mask_update_ms"].items())
        print(f"         one mask update of all layers: {stages}")

    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.output, lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=2) + "\n"))
    png = args.output.with_suffix(".png")
    atomic_write(png, lambda tmp: plot(summary, Path(tmp)))
    print(f"wrote {args.output.relative_to(REPO) if args.output.is_relative_to(REPO) else args.output} and {png.name}")


if __name__ == "__main__":
    main()
