"""File size of pruned MNIST models in every format, as ratios measured in one run.

Trains LeNet-300-100 and a LeNet-5-style CNN on the full MNIST, then, for each target
sparsity (50/80/90/95%), prunes a copy of the dense model gradually while fine-tuning
(`prune_low_magnitude` + `PolynomialDecay` + `UpdatePruningStep`), strips it, and writes it as:
a `.keras` file (no optimizer state), that file gzipped at level 9, `.kpsparse` with float32
(lossless), float16 and int8 kernel values, and LiteRT (`.tflite`, sparsity optimization).

Checks, per model and sparsity: float32 `.kpsparse` <= 0.85x the gzipped `.keras` (with every
zero written as +0.0, which gzip compresses better than the -0.0 masking leaves); at 90%,
int8 `.kpsparse` <= 0.035x the dense `.keras`. Reports test accuracy of the pruned model, of
its int8 and float16 round trips (the accuracy cost of lossy values), whether the float32 round
trip predicts identically, and the LiteRT max |output difference| on 1,000 test images.

Writes benchmarks/results/size.json and size.png.

Example:
    .venv/bin/python benchmarks/bench_size.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import tempfile
from pathlib import Path

import keras
import numpy as np

import keras_prune
from keras_prune.datasets import load_idx_dataset
from keras_prune.demo import count_prunable, lenet_300_100
from keras_prune.export.litert import convert_litert, litert_ops, run_litert
from keras_prune.export.sizes import plain_copy
from keras_prune.io import atomic_write

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SPARSITIES = (0.5, 0.8, 0.9, 0.95)
GZIP_TARGET, INT8_TARGET = 0.85, 0.035


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data",
                        help="folder holding mnist/ (default: ../shared/data from the repository root)")
    parser.add_argument("--epochs", type=int, default=3, help="dense training epochs (default: 3)")
    parser.add_argument("--prune-epochs", type=int, default=2, help="fine-tuning epochs while pruning (default: 2)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=RESULTS / "size.json")
    return parser.parse_args()


def lenet5(seed: int) -> keras.Model:
    """LeNet-5-style CNN: conv 6@5x5, pool, conv 16@5x5, pool, 120, 84, 10 logits."""
    init = lambda offset: keras.initializers.GlorotUniform(seed=seed + offset)  # noqa: E731
    return keras.Sequential(
        [
            keras.Input((28, 28)),
            keras.layers.Reshape((28, 28, 1)),
            keras.layers.Conv2D(6, 5, padding="same", activation="relu", kernel_initializer=init(0)),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(16, 5, activation="relu", kernel_initializer=init(1)),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(120, activation="relu", kernel_initializer=init(2)),
            keras.layers.Dense(84, activation="relu", kernel_initializer=init(3)),
            keras.layers.Dense(10, kernel_initializer=init(4)),
        ],
        name="lenet5",
    )


def compile_model(model: keras.Model) -> None:
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def accuracy(model: keras.Model, data: dict) -> float:
    logits = model.predict(data["x_test"], batch_size=1000, verbose=0)
    return float(np.mean(np.argmax(logits, axis=1) == data["y_test"]))


def prune(dense: keras.Model, sparsity: float, data: dict, args) -> keras.Model:
    steps = args.prune_epochs * -(-len(data["x_train"]) // args.batch_size)
    schedule = keras_prune.PolynomialDecay(0.0, sparsity, begin_step=0, end_step=int(steps * 0.7), frequency=50)
    pruned = keras_prune.prune_low_magnitude(plain_copy(dense), schedule)
    compile_model(pruned)
    pruned.fit(data["x_train"], data["y_train"], batch_size=args.batch_size, epochs=args.prune_epochs,
               callbacks=[keras_prune.UpdatePruningStep()], verbose=0)
    return keras_prune.strip_pruning(pruned)


def measure(model: keras.Model, data: dict, folder: Path) -> dict:
    """Every file format's bytes, and what lossy values cost in accuracy."""
    model = plain_copy(model)
    model.save(folder / "m.keras")
    raw = (folder / "m.keras").read_bytes()
    row = {"keras": len(raw), "keras_gzip": len(gzip.compress(raw, 9, mtime=0))}
    # Masking by multiplication leaves -0.0 among the zeros, which gzip compresses worse:
    # also measure gzip with every zero +0.0, the stricter baseline the targets use.
    clean = plain_copy(model)
    clean.set_weights([w + np.zeros((), w.dtype) for w in model.get_weights()])
    clean.save(folder / "clean.keras")
    row["keras_gzip_clean"] = len(gzip.compress((folder / "clean.keras").read_bytes(), 9, mtime=0))
    row["negative_zeros"] = int(sum(np.count_nonzero((w == 0) & np.signbit(w)) for w in model.get_weights()))
    row["int8_kernel_entropy_bytes"] = int8_entropy_bytes(model)
    reference = model.predict(data["x_test"], batch_size=1000, verbose=0)
    for values in ("float32", "float16", "int8"):
        path = keras_prune.export_sparse(model, folder / f"{values}.kpsparse", values=values, overwrite=True)
        row[f"sparse_{values}"] = path.stat().st_size
        loaded = keras_prune.load_sparse(path)
        if values == "float32":
            row["float32_identical_predictions"] = bool(np.array_equal(loaded.predict(data["x_test"], batch_size=1000, verbose=0), reference))
        else:
            row[f"accuracy_{values}"] = accuracy(loaded, data)
    content = convert_litert(model)
    row["litert"] = len(content)
    row["litert_max_abs_diff"] = float(np.max(np.abs(run_litert(content, data["x_test"]) - reference)))
    row["litert_densify_ops"] = litert_ops(content).count("DENSIFY")
    nonzero, total = count_prunable(model)
    row.update(accuracy=accuracy(model, data), sparsity=1 - nonzero / total)
    row["sparse_vs_gzip"] = row["sparse_float32"] / row["keras_gzip_clean"]
    row["sparse_vs_gzip_as_saved"] = row["sparse_float32"] / row["keras_gzip"]
    row["int8_vs_keras"] = row["sparse_int8"] / row["keras"]
    return row


def int8_entropy_bytes(model: keras.Model) -> int:
    """An information bound for int8 kernels: order-0 entropy of each kernel's nonzero
    positions (as if independent) plus that of its int8 values (per-channel max scaling)."""
    bits = 0.0
    for weight in model.get_weights():
        if weight.ndim < 2 or not np.any(weight):
            continue
        nonzero = weight != 0
        density = nonzero.mean()
        if density < 1:
            bits += weight.size * -(density * np.log2(density) + (1 - density) * np.log2(1 - density))
        scales = np.abs(weight.reshape(-1, weight.shape[-1])).max(axis=0) / 127
        values = np.rint(weight / np.where(scales > 0, scales, 1))[nonzero]
        counts = np.unique(values, return_counts=True)[1] / values.size
        bits += values.size * -(counts * np.log2(counts)).sum()
    return int(bits / 8)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4), sharey=True)
    keys = ["keras_gzip_clean", "litert", "sparse_float32", "sparse_float16", "sparse_int8"]
    for ax, (name, result) in zip(np.atleast_1d(axes), results.items()):
        rows = result["pruned"]
        labels = [f"{r['target_sparsity']:.0%}" for r in rows]
        width = 0.8 / len(keys)
        for i, key in enumerate(keys):
            ratios = [r[key] / result["dense"]["keras"] for r in rows]
            ax.bar(np.arange(len(rows)) + i * width, ratios, width, label=key)
        ax.set_xticks(np.arange(len(rows)) + 0.4 - width / 2, labels)
        ax.set_yscale("log")
        ax.set_title(f"{name}: file size / dense .keras")
        ax.set_xlabel("sparsity")
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def relative(value: object) -> str:
    """Paths as seen from the repository root, so results name no machine's folders."""
    if isinstance(value, Path):
        return os.path.relpath(value.resolve(), REPO)
    return str(value)


def main() -> None:
    args = parse_args()
    keras.utils.set_random_seed(args.seed)
    data = load_idx_dataset(args.data_dir / "mnist")
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        for name, build in (("lenet_300_100", lenet_300_100), ("lenet5", lenet5)):
            dense = build(args.seed)
            compile_model(dense)
            dense.fit(data["x_train"], data["y_train"], batch_size=args.batch_size, epochs=args.epochs, verbose=0)
            result = {"dense": measure(dense, data, folder), "pruned": []}
            print(f"{name}: dense accuracy {result['dense']['accuracy']:.4f}, .keras {result['dense']['keras']:,} bytes")
            for sparsity in SPARSITIES:
                row = {"target_sparsity": sparsity, **measure(prune(dense, sparsity, data, args), data, folder)}
                row["int8_vs_dense_keras"] = row["sparse_int8"] / result["dense"]["keras"]
                row["meets_gzip_target"] = row["sparse_vs_gzip"] <= GZIP_TARGET
                result["pruned"].append(row)
                print(
                    f"  {sparsity:.0%}: acc {row['accuracy']:.4f} | sparse f32 {row['sparse_float32']:,} B = "
                    f"{row['sparse_vs_gzip']:.3f}x gzip ({row['keras_gzip_clean']:,} B; as saved "
                    f"{row['keras_gzip']:,} B) | int8 {row['sparse_int8']:,} B = "
                    f"{row['int8_vs_dense_keras']:.4f}x dense .keras (entropy bound of its kernels "
                    f"{row['int8_kernel_entropy_bytes']:,} B), acc {row['accuracy_int8']:.4f} | "
                    f"f16 acc {row['accuracy_float16']:.4f} | LiteRT {row['litert']:,} B, "
                    f"max|diff| {row['litert_max_abs_diff']:.2g} | f32 identical: {row['float32_identical_predictions']}"
                )
            results[name] = result
    at90 = [r for res in results.values() for r in res["pruned"] if r["target_sparsity"] == 0.9]
    summary = {
        "all_float32_within_0.85x_gzip": all(r["meets_gzip_target"] for res in results.values() for r in res["pruned"]),
        "all_int8_at_90_within_0.035x_dense": all(r["int8_vs_dense_keras"] <= INT8_TARGET for r in at90),
    }
    print(json.dumps(summary))
    payload = {"args": {k: relative(v) for k, v in vars(args).items()}, "machine": platform.platform(),
               "keras": keras.__version__, "summary": summary, "results": results}
    atomic_write(args.output, lambda tmp: Path(tmp).write_text(json.dumps(payload, indent=2)))
    plot(results, args.output.with_suffix(".png"))
    print(f"wrote {args.output} and {args.output.with_suffix('.png')}")


if __name__ == "__main__":
    main()
