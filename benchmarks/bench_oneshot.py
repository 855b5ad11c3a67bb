"""Accuracy of a LeNet-5-style CNN on MNIST: one-shot pruning vs pruning with fine-tuning.

Trains the dense model on the full MNIST training set (the last 5,000 images held out for
validation), then measures test accuracy (10,000 images):

* one-shot `magnitude_prune` at 50/70/90% with layer and with global scope, no training;
* `iterative_prune` (prune + fine-tune rounds, masks held) at 90/95/98%;
* gradual pruning (`prune_low_magnitude` + `PolynomialDecay`, then `strip_pruning`) at 90/95/98%.

Writes results/oneshot_mnist.json and results/oneshot_mnist.png (accuracy vs sparsity) and
prints the table. About 40 minutes on 2 shared CPU cores with the defaults; --quick smoke-tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(ROOT / ".." / "shared" / "data"),
                        help="folder holding mnist/ (default: ../shared/data from the repo root)")
    parser.add_argument("--epochs", type=int, default=4, help="dense training epochs (default: 4)")
    parser.add_argument("--finetune-epochs", type=int, default=3,
                        help="fine-tuning epochs for each iterative/gradual run (default: 3)")
    parser.add_argument("--batch-size", type=int, default=128, help="batch size (default: 128)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "oneshot_mnist"),
                        help="output path without extension (.json and .png are written)")
    parser.add_argument("--methods", default="one-shot,iterative,gradual",
                        help="comma-separated subset of one-shot, iterative, gradual (default: all)")
    parser.add_argument("--finetune-scope", choices=("layer", "global"), default="layer",
                        help="ranking scope of the iterative and gradual runs (default: layer)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 6,000 training images (+5,000 validation), 1 epoch each (not for the results table)")
    return parser.parse_args()


def lenet5(keras):
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            layers.Conv2D(6, 5, padding="same", activation="relu", name="conv1"),
            layers.MaxPooling2D(2),
            layers.Conv2D(16, 5, activation="relu", name="conv2"),
            layers.MaxPooling2D(2),
            layers.Flatten(),
            layers.Dense(120, activation="relu", name="fc1"),
            layers.Dense(84, activation="relu", name="fc2"),
            layers.Dense(10, name="logits"),
        ],
        name="lenet5",
    )


def compile_model(keras, model, learning_rate=1e-3):
    model.compile(
        keras.optimizers.Adam(learning_rate),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def main() -> None:
    args = parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    import keras_prune as kp
    from keras_prune.analysis.plots import plot_metric_vs_sparsity
    from keras_prune.datasets import load_idx_dataset

    keras.utils.set_random_seed(args.seed)
    data = load_idx_dataset(Path(args.data_dir) / "mnist")
    x, y = data["x_train"][..., None], data["y_train"]
    x_test, y_test = data["x_test"][..., None], data["y_test"]
    if args.quick:
        x, y = x[:11000], y[:11000]
        args.epochs = args.finetune_epochs = 1
    x_train, y_train, x_val, y_val = x[:-5000], y[:-5000], x[-5000:], y[-5000:]
    fit = dict(batch_size=args.batch_size, verbose=0)

    def test_accuracy(model) -> float:
        compile_model(keras, model)
        return float(model.evaluate(x_test, y_test, batch_size=512, verbose=0, return_dict=True)["accuracy"])

    started = time.perf_counter()
    dense = lenet5(keras)
    compile_model(keras, dense)
    dense.fit(x_train, y_train, epochs=args.epochs, **fit)
    dense_acc = test_accuracy(dense)
    print(f"dense: test accuracy {dense_acc:.4f} ({time.perf_counter() - started:.0f} s)", flush=True)

    runs = []

    def record(method, scope, target, model, seconds):
        report = kp.summarize(model)
        row = {
            "method": method, "scope": scope, "target_sparsity": target,
            "sparsity": report.totals["sparsity"], "test_accuracy": test_accuracy(model),
            "nonzeros": report.totals["nonzeros"], "compressed_bytes": report.totals["compressed_bytes"],
            "seconds": round(seconds, 1),
        }
        runs.append(row)
        print(f"{method:>9} {scope:>6} {target:.2f}: sparsity {row['sparsity']:.4f} "
              f"test accuracy {row['test_accuracy']:.4f} ({seconds:.0f} s)", flush=True)

    methods = {m.strip() for m in args.methods.split(",")}
    for scope in ("layer", "global") if "one-shot" in methods else ():
        for target in (0.5, 0.7, 0.9):
            start = time.perf_counter()
            report = kp.magnitude_prune(dense, sparsity=target, scope=scope, inplace=False)
            record("one-shot", scope, target, report.model, time.perf_counter() - start)

    steps_per_epoch = -(-len(x_train) // args.batch_size)
    scope = args.finetune_scope
    for target in (0.9, 0.95, 0.98):
        if "iterative" in methods:
            start = time.perf_counter()
            report = kp.iterative_prune(
                dense, (x_train, y_train), validation_data=(x_val, y_val), sparsity=target,
                steps=args.finetune_epochs, epochs_per_step=1, batch_size=args.batch_size, scope=scope,
            )
            record("iterative", scope, target, report.model, time.perf_counter() - start)
        if "gradual" not in methods:
            continue
        start = time.perf_counter()
        # Ramp up over all but the last epoch; end_step on an update step, so the target is reached.
        ramp = steps_per_epoch * max(1, args.finetune_epochs - 1)
        frequency = max(1, min(100, ramp // 20))
        end_step = frequency * max(1, ramp // frequency)
        schedule = kp.PolynomialDecay(0.0, target, begin_step=0, end_step=end_step, frequency=frequency)
        pruned = kp.prune_low_magnitude(dense, pruning_schedule=schedule, scope=scope)
        compile_model(keras, pruned, learning_rate=5e-4)
        pruned.fit(x_train, y_train, epochs=args.finetune_epochs, callbacks=[kp.UpdatePruningStep()], **fit)
        record("gradual", scope, target, kp.strip_pruning(pruned), time.perf_counter() - start)

    result = {
        "benchmark": "bench_oneshot",
        "model": "LeNet-5-style CNN (conv 6@5x5, conv 16@5x5, dense 120, 84, 10; 61.7k params)",
        "data": "MNIST: 55,000 train / 5,000 validation (end of the training set) / 10,000 test",
        "quick": args.quick,
        "settings": {"epochs": args.epochs, "finetune_epochs": args.finetune_epochs,
                     "methods": sorted(methods), "finetune_scope": scope,
                     "batch_size": args.batch_size, "seed": args.seed},
        "environment": {"keras": keras.__version__, "backend": keras.backend.backend(),
                        "python": platform.python_version(), "cpus": os.cpu_count()},
        "dense_test_accuracy": dense_acc,
        "dense_params": kp.summarize(dense).totals["params"],
        "runs": runs,
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    series = {}
    for row in runs:
        name = row["method"] if row["method"] != "one-shot" else f"one-shot ({row['scope']})"
        series.setdefault(name, []).append((row["sparsity"], row["test_accuracy"]))
    plot_metric_vs_sparsity(series, out.with_suffix(".png"), metric="MNIST test accuracy",
                            baseline=dense_acc, title="LeNet-5 on MNIST: accuracy vs sparsity")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")
    print(markdown_table(result))


def markdown_table(result: dict) -> str:
    lines = ["| method | scope | sparsity | test accuracy | change vs dense |", "|---|---|---|---|---|",
             f"| dense | - | 0% | {result['dense_test_accuracy']:.2%} | - |"]
    for row in result["runs"]:
        delta = 100 * (row["test_accuracy"] - result["dense_test_accuracy"])
        lines.append(f"| {row['method']} | {row['scope']} | {row['sparsity']:.1%} | "
                     f"{row['test_accuracy']:.2%} | {delta:+.2f} pt |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
