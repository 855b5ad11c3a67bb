"""Training-time overhead of gradual pruning vs plain `fit`, measured side by side.

LeNet-300-100 (784-300-100-10 Dense, ReLU) on the full MNIST, batch 128, same seed, data and
initial weights for every variant:

* plain: `model.fit` on the dense model;
* f100 / f10: `prune_low_magnitude` with PolynomialDecay(0 -> 0.9) updating the masks every
  100 / 10 steps over the whole run, trained with `UpdatePruningStep`.

The three models are built and traced once (one untimed warm-up epoch each), then trained one
epoch at a time in turn (plain, f100, f10, then f100, f10, plain, ...), so whatever else the
machine does hits every variant alike. Each epoch's wall and process CPU time is recorded by a
callback. The ratios to plain:

* paired: each pruned epoch over the plain epoch of the same round, median over the rounds.
  Neighbouring epochs share the machine's state, so slow drifts cancel and the median drops
  the rounds a burst of other work hit. The targets (<= 1.05x at frequency 100, <= 1.15x at
  frequency 10) are judged on it;
* fastest epoch over fastest epoch: interference only ever adds time;
* median process CPU time per epoch.

The pruned runs also split their extra time into the callback's Python work per batch and the
mask recomputations (the rest is inside the compiled train step: mask constraints and the step
counter), and one mask update is timed stage by stage. `--threads 1` pins TensorFlow to one
thread, the steadiest setting on a shared machine.

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
from keras_prune import criteria, masks
from keras_prune.callbacks import collect_pruning
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
    parser.add_argument("--epochs", type=int, default=12,
                        help="timed epochs per variant, after one warm-up epoch each (default: 12)")
    parser.add_argument("--threads", type=int, default=None,
                        help="TensorFlow intra- and inter-op threads (default: TensorFlow's choice)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=RESULTS / "overhead.json")
    return parser.parse_args()


class EpochTimer(keras.callbacks.Callback):
    """Appends each epoch's wall time and process CPU time (all threads) to its lists."""

    def __init__(self):
        super().__init__()
        self.seconds, self.cpu_seconds = [], []

    def on_epoch_begin(self, epoch, logs=None):
        self._start, self._cpu_start = time.perf_counter(), time.process_time()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)
        self.cpu_seconds.append(time.process_time() - self._cpu_start)


class TimedUpdatePruningStep(keras_prune.UpdatePruningStep):
    """Sums the time of its per-batch hooks (mask updates included: one step per batch here).

    Kept across `fit` calls (the step carries over in the pruned model); `reset()` starts a new count.
    """

    def __init__(self):
        super().__init__()
        self.reset()

    def reset(self):
        self.hook_seconds = 0.0
        self.batches = 0

    def on_train_batch_begin(self, batch, logs=None):
        start = time.perf_counter()
        super().on_train_batch_begin(batch, logs)
        self.hook_seconds += time.perf_counter() - start
        self.batches += 1

    def on_train_batch_end(self, batch, logs=None):
        start = time.perf_counter()
        super().on_train_batch_end(batch, logs)
        self.hook_seconds += time.perf_counter() - start


class Variant:
    """One model trained an epoch at a time, with its own timers; pruned when ``frequency`` is set."""

    def __init__(self, frequency: int | None, seed: int, total_steps: int):
        self.frequency = frequency
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
        self.model = model
        self.timer = EpochTimer()
        self.callbacks = [self.timer]
        if frequency is not None:
            self.update_step = TimedUpdatePruningStep()
            self.callbacks.insert(0, self.update_step)

    def epoch(self, data, batch_size: int) -> None:
        self.model.fit(data["x_train"], data["y_train"], batch_size=batch_size, epochs=1,
                       callbacks=self.callbacks, verbose=0, shuffle=True)

    def start_timing(self) -> None:
        """Forgets the warm-up epoch (it includes tracing)."""
        self.timer.seconds.clear()
        self.timer.cpu_seconds.clear()
        if self.frequency is not None:
            self.update_step.reset()

    def evaluate(self, data) -> dict:
        """Test accuracy and final sparsity of the prunable weights."""
        final = keras_prune.strip_pruning(self.model) if self.frequency is not None else self.model
        nonzero, total = count_prunable(final)
        logits = keras.ops.convert_to_numpy(final(data["x_test"]))  # predict() would retrace per model
        return {"accuracy": float((logits.argmax(-1) == data["y_test"]).mean()),
                "sparsity": 1.0 - nonzero / total}

    def breakdown(self) -> dict:
        """Per batch: the callback's work (mask updates included); and one mask recomputation's stages."""
        step = self.update_step
        return {
            "batches": step.batches,
            "callback_us_per_batch": 1e6 * step.hook_seconds / step.batches,
            "one_mask_update_ms": mask_update_breakdown(collect_pruning(self.model)),
        }


def mask_update_breakdown(states, repeats: int = 5) -> dict:
    """Milliseconds of one mask update of every pruned weight, split into its three stages."""
    stages = {"read_weights_and_score": [], "compute_masks": [], "assign_masks_and_zero": []}
    sparsity = FINAL_SPARSITY / 2
    for _ in range(repeats):
        times = dict.fromkeys(stages, 0.0)
        for state in states:
            start = time.perf_counter()
            values = state.weight_values()
            scores = [criteria.magnitude(v) for v in values]
            scored = time.perf_counter()
            keep = [masks.pattern_mask(score, sparsity) for score in scores]
            computed = time.perf_counter()
            state.assign_masks(keep, values)
            assigned = time.perf_counter()
            times["read_weights_and_score"] += scored - start
            times["compute_masks"] += computed - scored
            times["assign_masks_and_zero"] += assigned - computed
        for name in stages:
            stages[name].append(1e3 * times[name])
    return {name: statistics.median(values) for name, values in stages.items()}


def run_interleaved(data, args) -> dict[str, Variant]:
    """Warm-up epoch for each variant, then ``args.epochs`` timed epochs each, in rotating turns."""
    steps_per_epoch = -(-len(data["x_train"]) // args.batch_size)
    total_steps = (args.epochs + 1) * steps_per_epoch
    variants = {name: Variant(frequency, args.seed, total_steps) for name, frequency in VARIANTS.items()}
    for variant in variants.values():
        variant.epoch(data, args.batch_size)
        variant.start_timing()
    names = list(variants)
    for round_ in range(args.epochs):
        order = names[round_ % len(names):] + names[: round_ % len(names)]  # no variant always first
        for name in order:
            variants[name].epoch(data, args.batch_size)
        times = ", ".join(f"{n} {variants[n].timer.seconds[-1]:.3f} s" for n in names)
        print(f"epoch {round_ + 1}/{args.epochs}: {times}", flush=True)
    return variants


def summarize(variants: dict[str, Variant], data, args) -> dict:
    seconds = {n: v.timer.seconds for n, v in variants.items()}
    cpu = {n: v.timer.cpu_seconds for n, v in variants.items()}
    fastest = {n: min(s) for n, s in seconds.items()}
    medians = {n: statistics.median(s) for n, s in seconds.items()}
    cpu_medians = {n: statistics.median(s) for n, s in cpu.items()}
    paired = {n: [a / b for a, b in zip(seconds[n], seconds["plain"])] for n in TARGETS}
    ratios = {n: statistics.median(paired[n]) for n in TARGETS}
    return {
        "benchmark": "training overhead of gradual pruning vs plain fit",
        "model": "LeNet-300-100 (784-300-100-10 Dense, ReLU), Adam 1e-3",
        "data": "MNIST, 60,000 train images",
        "schedule": f"PolynomialDecay(0 -> {FINAL_SPARSITY}) over the whole run",
        "batch_size": args.batch_size, "timed_epochs": args.epochs, "seed": args.seed,
        "threads": args.threads or "default",
        "backend": keras.backend.backend(), "keras": keras.__version__, "python": platform.python_version(),
        "ratios": ratios,
        "paired_ratios": paired,
        "fastest_epoch_seconds": fastest,
        "fastest_ratios": {n: fastest[n] / fastest["plain"] for n in TARGETS},
        "median_epoch_seconds": medians,
        "median_epoch_cpu_seconds": cpu_medians,
        "cpu_ratios": {n: cpu_medians[n] / cpu_medians["plain"] for n in TARGETS},
        "targets": TARGETS,
        "meets_targets": {n: ratios[n] <= TARGETS[n] for n in TARGETS},
        "final": {n: v.evaluate(data) for n, v in variants.items()},
        "epoch_seconds": seconds,
        "epoch_cpu_seconds": cpu,
        "breakdown": {n: variants[n].breakdown() for n in TARGETS},
    }


def report(summary: dict) -> None:
    print(f"\nseconds per epoch ({summary['timed_epochs']} timed epochs each, threads: {summary['threads']}):")
    for name in VARIANTS:
        final = summary["final"][name]
        line = (f"  {name:>5}: fastest {summary['fastest_epoch_seconds'][name]:.3f} s, median "
                f"{summary['median_epoch_seconds'][name]:.3f} s, accuracy {final['accuracy']:.4f}, "
                f"sparsity {final['sparsity']:.4f}")
        if name in TARGETS:
            verdict = "meets" if summary["meets_targets"][name] else "MISSES"
            line += (f"\n         paired ratio {summary['ratios'][name]:.3f}x ({verdict} target {TARGETS[name]:.2f}x); "
                     f"fastest {summary['fastest_ratios'][name]:.3f}x, CPU-time median {summary['cpu_ratios'][name]:.3f}x")
        print(line)
    print("where the pruned runs spend their extra time (per batch):")
    for name, p in summary["breakdown"].items():
        print(f"  {name:>5}: callback {p['callback_us_per_batch']:.0f} us per batch (mask updates included); "
              "the rest is in the compiled step")
        stages = ", ".join(f"{k} {v:.1f} ms" for k, v in p["one_mask_update_ms"].items())
        print(f"         one mask update of all layers: {stages}")


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(VARIANTS)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.boxplot([summary["epoch_seconds"][n] for n in names], tick_labels=names)
    for i, name in enumerate(names[1:], start=2):
        ratio = summary["ratios"][name]
        ax.annotate(f"paired {ratio:.3f}x (target {TARGETS[name]:.2f}x)",
                    (i, summary["fastest_epoch_seconds"][name]),
                    textcoords="offset points", xytext=(0, -14), ha="center", fontsize=8)
    ax.set_ylabel("seconds per epoch")
    ax.set_title("LeNet-300-100, full MNIST, batch 128: pruning vs plain fit", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def set_threads(threads: int | None) -> None:
    if threads is not None:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)


def main() -> None:
    args = parse_args()
    if args.epochs < 1:
        raise SystemExit("--epochs must be >= 1")
    set_threads(args.threads)
    data = load_idx_dataset(args.data_dir / "mnist")
    summary = summarize(run_interleaved(data, args), data, args)
    report(summary)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.output, lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=2) + "\n"))
    png = args.output.with_suffix(".png")
    atomic_write(png, lambda tmp: plot(summary, Path(tmp)))
    print(f"wrote {args.output.relative_to(REPO) if args.output.is_relative_to(REPO) else args.output} and {png.name}")


if __name__ == "__main__":
    main()
