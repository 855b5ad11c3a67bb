"""Training overhead of gradual pruning, keras-prune vs tfmot, each against its own plain `fit`.

The comparison cells time whole fine-tuning runs one after another, so a busy machine blurs
their overhead. This measures it the way benchmarks/bench_training_overhead.py does, once per
tool in that tool's own environment: LeNet-300-100 on the full MNIST, batch 128, Adam, three
models built once (plain, PolynomialDecay 0 -> 0.9 over the whole run with masks updated every
100 and every 10 steps), trained one epoch at a time in rotating turns after an untimed warm-up
epoch each. A tool's overhead is the median over rounds of pruned epoch / plain epoch of the
same round, so each tool is judged against plain `fit` on its own Keras (3 or 2).

Both tools run the same code: keras-prune through ``keras_prune.compat.tfmot``, tfmot (0.8, on
``tf_keras`` with TF_USE_LEGACY_KERAS=1) in benchmarks/.venv-tfmot, created on first use.

Writes benchmarks/results/tfmot_overhead.json.

Example:
    .venv/bin/python benchmarks/tfmot_compare/overhead.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import shared

VARIANTS = {"plain": None, "f100": 100, "f10": 10}
FINAL_SPARSITY = 0.9
OUTPUT = shared.RESULTS / "tfmot_overhead.json"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=shared.REPO.parent / "shared" / "data",
                        help="folder holding mnist/ (default: ../shared/data from the repository root)")
    parser.add_argument("--epochs", type=int, default=10, help="timed epochs per variant (default: 10)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tool", choices=shared.TOOLS, help=argparse.SUPPRESS)  # one tool, in its env
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def import_tool(tool: str):
    """(keras module, tfmot-shaped module) for ``tool``; the rest of the code is shared."""
    if tool == "tfmot":
        if os.environ.get("TF_USE_LEGACY_KERAS") != "1":
            raise SystemExit("Run tfmot with TF_USE_LEGACY_KERAS=1 (it needs tf.keras to be Keras 2).")
        import tensorflow_model_optimization as tfmot
        import tf_keras as keras
    else:
        import keras

        import keras_prune.compat.tfmot as tfmot
    return keras, tfmot


def build(keras, tfmot, frequency, seed: int, total_steps: int):
    keras.utils.set_random_seed(seed)
    model = shared.build_model("lenet_300_100", keras)
    callbacks = []
    if frequency is not None:
        sparsity = tfmot.sparsity.keras
        end_step = max(frequency, (total_steps - 1) // frequency * frequency)
        schedule = sparsity.PolynomialDecay(initial_sparsity=0.0, final_sparsity=FINAL_SPARSITY,
                                            begin_step=0, end_step=end_step, frequency=frequency)
        model = sparsity.prune_low_magnitude(model, pruning_schedule=schedule)
        callbacks = [sparsity.UpdatePruningStep()]
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model, callbacks


def measure(tool: str, args) -> dict:
    """Interleaved epochs of the three variants in this process; paired ratios to plain."""
    keras, tfmot = import_tool(tool)
    data = shared.load_data(args.data_dir, "lenet_300_100")
    x, y = data["x_train"], data["y_train"]
    total_steps = (args.epochs + 1) * -(-len(x) // args.batch_size)
    runs = {}
    for name, frequency in VARIANTS.items():
        model, callbacks = build(keras, tfmot, frequency, args.seed, total_steps)
        timer = shared.timer_callback(keras)
        runs[name] = (model, callbacks + [timer], timer)
    names = list(VARIANTS)
    for round_ in range(args.epochs + 1):  # round 0 is the untimed warm-up
        for name in names[round_ % 3:] + names[: round_ % 3]:
            model, callbacks, _ = runs[name]
            model.fit(x, y, batch_size=args.batch_size, epochs=1, callbacks=callbacks, verbose=0)
    seconds = {name: timer.seconds[1:] for name, (_, _, timer) in runs.items()}
    paired = {n: [a / b for a, b in zip(seconds[n], seconds["plain"])] for n in names[1:]}
    return {"tool": tool, "keras": keras.__version__, "epoch_seconds": seconds, "paired_ratios": paired,
            "ratios": {n: statistics.median(r) for n, r in paired.items()}, "machine": shared.machine()}


def run_tool(tool: str, args) -> dict:
    """Runs ``measure`` for ``tool`` in a subprocess of that tool's environment."""
    if tool == "tfmot":
        import harness

        python, env = str(harness.ensure_tfmot_env()), {**os.environ, "TF_USE_LEGACY_KERAS": "1"}
    else:
        python, env = sys.executable, None
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "result.json"
        command = [python, __file__, "--tool", tool, "--out", str(out), "--data-dir", str(args.data_dir),
                   "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--seed", str(args.seed)]
        subprocess.run(command, env=env, check=True)
        return json.loads(out.read_text())


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.tool:
        shared.write_json(args.out, measure(args.tool, args))
        return
    results = {tool: run_tool(tool, args) for tool in shared.TOOLS}
    summary = {"benchmark": "training overhead vs each tool's own plain fit, interleaved epochs",
               "model": "LeNet-300-100, full MNIST", "batch_size": args.batch_size, "timed_epochs": args.epochs,
               "schedule": f"PolynomialDecay(0 -> {FINAL_SPARSITY}) over the whole run", "results": results}
    shared.write_json(OUTPUT, summary)
    print(f"\npaired ratio to plain fit (median over {args.epochs} rounds):")
    for tool, result in results.items():
        ratios = ", ".join(f"frequency {VARIANTS[n]}: {r:.3f}x" for n, r in result["ratios"].items())
        print(f"  {tool:>11} (Keras {result['keras']}): {ratios}")
    print(f"wrote {OUTPUT.relative_to(shared.REPO)}")


if __name__ == "__main__":
    main()
