"""Structured pruning on CIFAR-10: dense vs channel-pruned, side by side in one run.

For a small ResNet-style CNN and a MobileNet-style CNN (depthwise separable blocks): train
dense, remove --ratio of every prunable channel group with keras_prune.structured.
prune_channels, fine-tune, then report parameters, FLOPs, test accuracy and median CPU
inference latency at batch 1 and 32, measured interleaved in this process: in TensorFlow (a
compiled tf.function), in TensorFlow with BatchNorm folded into the convolutions of both models
(keras_prune.fold_batchnorm), and in LiteRT's interpreter (the models converted to LiteRT).

    .venv/bin/python benchmarks/bench_structured.py --quick   # smoke run, ~2 minutes
    .venv/bin/python benchmarks/bench_structured.py           # full run: 15-40 min on 2 cores
    .venv/bin/python benchmarks/bench_structured.py --latency-only --width 128   # no training

Writes benchmarks/results/structured[_quick].json and .png and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CACHE = ROOT / "benchmarks" / ".cache"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=str(ROOT / ".." / "shared" / "data"),
                        help="folder holding cifar10-jpg/CIFAR-10-images.tar (default: "
                             "../shared/data relative to the repository root)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2,000 training images, 1 epoch each, few repeats")
    parser.add_argument("--models", default="resnet,mobilenet",
                        help="comma-separated subset of resnet,mobilenet")
    parser.add_argument("--ratio", type=float, default=0.5, help="fraction of channels removed")
    parser.add_argument("--round-to", type=int, default=8, help="channel count multiple")
    parser.add_argument("--importance", default="l1", help="l1, l2, bn_scale or taylor")
    parser.add_argument("--epochs", type=int, default=None, help="dense training epochs (6)")
    parser.add_argument("--finetune-epochs", type=int, default=None, help="fine-tuning epochs (12)")
    parser.add_argument("--train-size", type=int, default=None, help="training images (20000)")
    parser.add_argument("--repeats", type=int, default=None, help="latency rounds (40)")
    parser.add_argument("--width", type=int, default=32,
                        help="channels of the first stage (32); wider models are more compute-bound")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--latency-only", action="store_true",
                        help="no data or training: time dense vs shrunk architectures only "
                             "(latency does not depend on the weights' values)")
    parser.add_argument("--latency-from", default=None, metavar="DIR",
                        help="with --latency-only: time the trained models that --save-models "
                             "kept in DIR instead of freshly built ones")
    parser.add_argument("--tag", default="", help="suffix for the result files (structured_TAG)")
    parser.add_argument("--matched-dense", action="store_true",
                        help="also train a dense control for as many epochs as the shrunk model "
                             "had in all (epochs + fine-tuning), and report its accuracy")
    parser.add_argument("--save-models", action="store_true",
                        help="keep the trained dense and fine-tuned shrunk models as .keras files "
                             "under benchmarks/.cache/structured_TAG/ (re-time them with "
                             "--latency-from that folder)")
    args = parser.parse_args()
    unknown = set(args.models.split(",")) - {"resnet", "mobilenet"}
    if unknown:
        parser.error(f"--models takes resnet and/or mobilenet. Received: {args.models}")
    if args.latency_from and not args.latency_only:
        parser.error("--latency-from goes with --latency-only")
    return args


def resnet_style(keras, width: int = 32):
    """A ResNet-style CNN: strided stem, three stages of one basic block (32/64/128)."""
    L = keras.layers

    def conv_bn(x, filters, stride=1, relu=True, kernel=3):
        x = L.Conv2D(filters, kernel, stride, padding="same", use_bias=False)(x)
        x = L.BatchNormalization()(x)
        return L.ReLU()(x) if relu else x

    inputs = keras.Input((32, 32, 3))
    x = conv_bn(inputs, width, stride=2)
    for stage, filters in enumerate((width, 2 * width, 4 * width)):
        stride = 1 if stage == 0 else 2
        shortcut = x if stride == 1 else conv_bn(x, filters, stride, relu=False, kernel=1)
        y = conv_bn(x, filters, stride)
        y = conv_bn(y, filters, relu=False)
        x = L.ReLU()(L.Add()([shortcut, y]))
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.Dense(10)(x), name="resnet_style")


def mobilenet_style(keras, width: int = 32):
    """A MobileNet-style CNN: strided stem, depthwise 3x3 + pointwise 1x1 blocks."""
    L = keras.layers
    inputs = keras.Input((32, 32, 3))
    x = L.ReLU()(L.BatchNormalization()(L.Conv2D(width, 3, 2, padding="same", use_bias=False)(inputs)))
    for filters, stride in ((2 * width, 1), (4 * width, 2), (4 * width, 1), (8 * width, 2),
                            (8 * width, 1)):
        x = L.DepthwiseConv2D(3, stride, padding="same", use_bias=False)(x)
        x = L.ReLU()(L.BatchNormalization()(x))
        x = L.Conv2D(filters, 1, use_bias=False)(x)
        x = L.ReLU()(L.BatchNormalization()(x))
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.Dense(10)(x), name="mobilenet_style")


BUILDERS = {"resnet": resnet_style, "mobilenet": mobilenet_style}
# Result key -> (compare_latency runtime, BatchNorm folded first), and how tables name them.
RUNTIME_SETUPS = {"latency": ("keras", False), "latency_folded": ("keras", True),
                  "latency_litert": ("litert", False)}
RUNTIME_LABELS = {"latency": "TF", "latency_folded": "TF, BN folded", "latency_litert": "LiteRT"}


def train(keras, model, data, epochs: int, lr: float, seed: int) -> float:
    """Adam with cosine decay, random horizontal flips; prints a line per epoch and returns
    the seconds spent."""
    import numpy as np

    x, y = data["x_train"], data["y_train"]
    steps = epochs * int(np.ceil(len(x) / 128))
    schedule = keras.optimizers.schedules.CosineDecay(lr, max(steps, 1))
    model.compile(optimizer=keras.optimizers.Adam(schedule),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    for epoch in range(epochs):
        flip = rng.random(len(x)) < 0.5
        xe = np.where(flip[:, None, None, None], x[:, :, ::-1], x)
        logs = model.fit(xe, y, batch_size=128, epochs=1, verbose=0, shuffle=True).history
        print(f"  [{model.name}] epoch {epoch + 1}/{epochs}: loss {logs['loss'][-1]:.4f}, "
              f"accuracy {logs['accuracy'][-1]:.4f}, {time.perf_counter() - start:.0f} s",
              flush=True)
    return time.perf_counter() - start


def accuracy(model, data) -> float:
    import numpy as np

    logits = model.predict(data["x_test"], batch_size=256, verbose=0)
    return float((np.argmax(logits, -1) == data["y_test"]).mean())


def run_model(name, build, data, args, settings) -> dict:
    import keras

    from keras_prune.analysis.flops import total_flops
    from keras_prune.structured import plan_channels
    from keras_prune.structured.surgery import apply_plan

    keras.utils.set_random_seed(args.seed)
    dense = build(keras, args.width)
    train_s = train(keras, dense, data, settings["epochs"], 2e-3, args.seed)
    acc_dense = accuracy(dense, data)
    calibration = (data["x_train"][:512], data["y_train"][:512])
    plan = plan_channels(dense, args.ratio, importance=args.importance, round_to=args.round_to,
                         calibration_data=calibration)
    shrunk = apply_plan(plan)
    acc_pruned = accuracy(shrunk, data)
    finetune_s = train(keras, shrunk, data, settings["finetune_epochs"], 1e-3, args.seed + 1)
    acc_finetuned = accuracy(shrunk, data)
    accuracies = {"dense": acc_dense, "shrunk_before_finetune": acc_pruned,
                  "shrunk_after_finetune": acc_finetuned,
                  "drop_points": 100 * (acc_dense - acc_finetuned)}
    if args.matched_dense:
        # The shrunk model trained epochs + finetune_epochs in all: so does this dense control.
        keras.utils.set_random_seed(args.seed)
        control = build(keras, args.width)
        train(keras, control, data, settings["epochs"] + settings["finetune_epochs"], 2e-3, args.seed)
        accuracies["dense_matched_epochs"] = accuracy(control, data)
        accuracies["drop_points_vs_matched"] = 100 * (accuracies["dense_matched_epochs"] - acc_finetuned)
    if args.save_models:
        save_models(name, dense, shrunk, args.tag)
    result = {
        "params": {"dense": dense.count_params(), "shrunk": shrunk.count_params()},
        "flops": {"dense": total_flops(dense), "shrunk": total_flops(shrunk)},
        "accuracy": accuracies,
        **latency_pair(dense, shrunk, settings["repeats"]),
        "train_seconds": {"dense": train_s, "finetune": finetune_s},
        "plan": plan.summary().splitlines(),
    }
    control = accuracies.get("dense_matched_epochs")
    print(f"[{name}] done: dense {acc_dense:.4f}, shrunk {acc_finetuned:.4f}"
          + (f", dense trained as long {control:.4f}" if control is not None else ""), flush=True)
    return result


def save_models(name: str, dense, shrunk, tag: str) -> None:
    folder = CACHE / f"structured{'_' + tag if tag else ''}"
    folder.mkdir(parents=True, exist_ok=True)
    for kind, model in (("dense", dense), ("shrunk", shrunk)):
        model.save(folder / f"{name}_{kind}.keras")
    print(f"[{name}] saved the trained models in {folder}", flush=True)


def latency_pair(dense, shrunk, repeats: int) -> dict:
    """Dense vs shrunk median milliseconds at batch 1 and 32, interleaved, in each of RUNTIME_SETUPS:
    TensorFlow as the models are, TensorFlow with BatchNorm folded into the convolutions of
    both, and LiteRT's interpreter (whose converter folds BatchNorm itself)."""
    from keras_prune.analysis.latency import compare_latency
    from keras_prune.structured import fold_batchnorm

    folded = [fold_batchnorm(dense), fold_batchnorm(shrunk)]
    out = {}
    for key, (runtime, fold) in RUNTIME_SETUPS.items():
        out[key] = {}
        for batch in (1, 32):
            models = folded if fold else [dense, shrunk]
            ms = compare_latency(models, batch, repeats=repeats, runtime=runtime)
            out[key][f"batch{batch}"] = {"dense_ms": ms[0], "shrunk_ms": ms[1], "speedup": ms[0] / ms[1]}
    return out


def latency_only(args, settings) -> dict:
    """Dense vs shrunk latency, many rounds, no training: of freshly initialized models, or of
    the trained ones that --save-models kept when --latency-from names their folder."""
    import keras

    from keras_prune.analysis.flops import total_flops
    from keras_prune.structured import prune_channels

    results = {}
    for name in args.models.split(","):
        if args.latency_from:
            folder = Path(args.latency_from)
            dense, shrunk = (keras.saving.load_model(folder / f"{name}_{kind}.keras")
                             for kind in ("dense", "shrunk"))
        else:
            dense = BUILDERS[name](keras, args.width)
            shrunk = prune_channels(dense, args.ratio, round_to=args.round_to)
        row = {"flops": {"dense": total_flops(dense), "shrunk": total_flops(shrunk)},
               **latency_pair(dense, shrunk, settings["repeats"])}
        results[name] = row
        for key, label in RUNTIME_LABELS.items():
            print(f"{name}, {label}: batch 1 {row[key]['batch1']['speedup']:.2f}x, "
                  f"batch 32 {row[key]['batch32']['speedup']:.2f}x", flush=True)
    return results


def table(results: dict) -> str:
    """Markdown: per model, dense and shrunk size, accuracy and latency in every runtime."""
    latency_columns = [f"{label} batch {b} ms" for label in RUNTIME_LABELS.values() for b in (1, 32)]
    header = ["model", "params", "MFLOPs", "top-1", *latency_columns]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, r in results.items():
        for kind, acc_key in (("dense", "dense"), ("shrunk", "shrunk_after_finetune")):
            cells = [f"{name} {kind}", f"{r['params'][kind]:,}", f"{r['flops'][kind] / 1e6:.1f}",
                     f"{100 * r['accuracy'][acc_key]:.2f}%"]
            for key in RUNTIME_LABELS:
                for batch in ("batch1", "batch32"):
                    if key not in r:
                        cells.append("-")
                        continue
                    m = r[key][batch]
                    cells.append(f"{m[f'{kind}_ms']:.2f}"
                                 + (f" ({m['speedup']:.2f}x)" if kind == "shrunk" else ""))
            rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    bars = [(key, batch) for key in RUNTIME_LABELS for batch in ("batch1", "batch32")
            if all(key in results[n] for n in names)]
    width = 0.8 / len(bars)
    for i, (key, batch) in enumerate(bars):
        label = f"{RUNTIME_LABELS[key]}, {batch.replace('batch', 'batch ')}"
        ax1.bar([j + width * i for j in range(len(names))],
                [results[n][key][batch]["speedup"] for n in names], width, label=label)
    ax1.axhline(1.0, color="grey", lw=0.8)
    ax1.set_xticks([j + width * (len(bars) - 1) / 2 for j in range(len(names))], names)
    ax1.set_ylabel("speedup, dense / shrunk (x)")
    ax1.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, fontsize="small")
    for i, key in enumerate(("dense", "shrunk_after_finetune")):
        ax2.bar([j + 0.4 * i for j in range(len(names))],
                [100 * results[n]["accuracy"][key] for n in names], 0.4, label=key)
    ax2.set_xticks([j + 0.2 for j in range(len(names))], names)
    ax2.set_ylabel("CIFAR-10 test top-1 (%)")
    ax2.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, fontsize="small")
    fig.suptitle("Structured pruning, 50% of channels removed")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    args = parse_args()
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    import numpy as np

    from keras_prune.datasets import load_cifar10

    settings = {
        "epochs": args.epochs or (1 if args.quick else 6),
        "finetune_epochs": args.finetune_epochs or (1 if args.quick else 12),
        "train_size": args.train_size or (2000 if args.quick else 20000),
        "repeats": args.repeats or (10 if args.quick else 40),
    }
    if args.latency_only:
        settings["repeats"] = args.repeats or 200
        out = RESULTS / f"structured_latency{'_' + args.tag if args.tag else ''}.json"
        RESULTS.mkdir(parents=True, exist_ok=True)
        payload = {"settings": {"repeats": settings["repeats"], "ratio": args.ratio, "width": args.width,
                                "models_from": args.latency_from,
                                "round_to": args.round_to, "cpus": os.cpu_count(),
                                "os_load_average": os.getloadavg()},
                   "results": latency_only(args, settings)}
        out.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {out}")
        return
    raw = load_cifar10(Path(args.data_dir) / "cifar10-jpg" / "CIFAR-10-images.tar")
    rng = np.random.default_rng(args.seed)
    pick = rng.permutation(len(raw["x_train"]))[: settings["train_size"]]
    data = {
        "x_train": raw["x_train"][pick].astype("float32") / 255.0, "y_train": raw["y_train"][pick],
        "x_test": raw["x_test"].astype("float32") / 255.0, "y_test": raw["y_test"],
    }
    results = {}
    for name in args.models.split(","):
        results[name] = run_model(name, BUILDERS[name], data, args, settings)
    stem = "structured_quick" if args.quick else "structured"
    stem += f"_{args.tag}" if args.tag else ""
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {
        "settings": {**settings, "ratio": args.ratio, "round_to": args.round_to, "width": args.width,
                     "importance": args.importance, "seed": args.seed,
                     "backend": keras.backend.backend(), "keras": keras.__version__,
                     "cpus": os.cpu_count(), "machine": platform.machine()},
        "targets": {"batch32_speedup": 2.5, "batch1_speedup": 1.8, "max_drop_points": 1.0},
        "results": results,
    }
    (RESULTS / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n")
    plot(results, RESULTS / f"{stem}.png")
    print(table(results))
    print(f"wrote {RESULTS / stem}.json and .png")


if __name__ == "__main__":
    main()
