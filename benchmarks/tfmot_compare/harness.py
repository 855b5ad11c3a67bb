"""keras-prune vs tfmot, side by side on real data: accuracy, training time, file sizes.

Both tools start from the same pretrained dense weights (one per model and seed, trained once
with Keras 3 and saved as .npz), and fine-tune with the same pruning schedule
(PolynomialDecay 0 -> target, cubic, over the first half of training, then held), optimizer
(Adam), batch size, epochs and data order (each epoch is a seeded random subset of the training
images, identical for both tools). Sparsity 0 is plain fine-tuning with the same budget: the
baseline for the accuracy loss and for the training overhead of each tool.

keras-prune runs on Keras 3 in this environment; tfmot runs on Keras 2 (`tf_keras`,
TF_USE_LEGACY_KERAS=1) in its own virtualenv, benchmarks/.venv-tfmot, created on first use
from PyPI. Each (model, seed) is one subprocess per tool; every finished cell is written at
once, and cells already written are skipped, so an interrupted run resumes where it stopped.

Writes benchmarks/results/<name>/cells/*.json (one per cell), <name>/dense/*.json (the
pretrained baselines), benchmarks/results/<name>.json (the summary), <name>_*.png (plots) and,
for the full run, docs/results.md.

Examples:
    .venv/bin/python benchmarks/tfmot_compare/harness.py --quick      # smoke test, minutes
    .venv/bin/python benchmarks/tfmot_compare/harness.py              # the full matrix
    .venv/bin/python benchmarks/tfmot_compare/harness.py --models lenet5 --seeds 0 --sparsities 0.9 0.95
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import shared

VENV = shared.REPO / "benchmarks" / ".venv-tfmot"
TFMOT_REQUIREMENTS = ("tensorflow-cpu==2.21.*", "tf-keras==2.21.*", "tensorflow-model-optimization==0.8.*",
                      "tensorboard==2.20.*")  # PruningSummaries writes event files
FULL = {"epochs": 4, "epoch_samples": None, "pretrain_scale": 1.0}  # images per epoch: per model
QUICK = {"epochs": 3, "epoch_samples": 2000, "pretrain_scale": 0.0}  # one pretraining epoch


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=shared.REPO.parent / "shared" / "data",
                        help="folder holding mnist/ and fashion-mnist/ (default: ../shared/data from the repo root)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: seed 0, sparsities 0.5 and 0.9, tiny budget, results named *_quick")
    parser.add_argument("--models", nargs="+", choices=list(shared.MODELS), default=list(shared.MODELS))
    parser.add_argument("--sparsities", nargs="+", type=float, help=f"default: {list(shared.SPARSITIES)}")
    parser.add_argument("--seeds", nargs="+", type=int, help=f"default: {list(shared.SEEDS)}")
    parser.add_argument("--tools", nargs="+", choices=shared.TOOLS + shared.EXTRA_TOOLS, default=list(shared.TOOLS),
                        help="keras_prune_global: keras-prune with one ranking across layers (not in tfmot)")
    parser.add_argument("--epochs", type=int, help="fine-tuning epochs; the first is not timed (default: 4)")
    parser.add_argument("--epoch-samples", type=int,
                        help="training images per epoch (default: 60000 for the MLP, 15000 for the CNNs)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=5e-4, help="Adam, fine-tuning (default: 5e-4)")
    parser.add_argument("--frequency", type=int, default=25, help="steps between mask updates (default: 25)")
    parser.add_argument("--name", help="results name (default: tfmot_compare, or tfmot_compare_quick)")
    parser.add_argument("--no-page", action="store_true", help="do not write docs/results.md")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: summarize the cells written so far (e.g. of a run still going)")
    args = parser.parse_args(argv)
    mode = QUICK if args.quick else FULL
    args.sparsities = args.sparsities or ([0.5, 0.9] if args.quick else list(shared.SPARSITIES))
    args.seeds = args.seeds if args.seeds is not None else ([0] if args.quick else list(shared.SEEDS))
    args.epochs = args.epochs or mode["epochs"]
    args.epoch_samples = args.epoch_samples or mode["epoch_samples"]
    args.pretrain_scale = mode["pretrain_scale"]
    args.name = args.name or ("tfmot_compare_quick" if args.quick else "tfmot_compare")
    if any(not 0 < s < 1 for s in args.sparsities):
        parser.error(f"--sparsities must be in (0, 1). Received: {args.sparsities}")
    if args.epochs < 2:
        parser.error(f"--epochs must be >= 2 (the first epoch is not timed). Received: {args.epochs}")
    for folder in sorted({shared.MODELS[m][0] for m in args.models}):
        if not (args.data_dir / folder).is_dir():
            parser.error(f"--data-dir {args.data_dir} has no {folder}/ folder; pass the folder holding the datasets.")
    return args


def ensure_tfmot_env() -> Path:
    """The tfmot virtualenv's python, creating the environment once (idempotent)."""
    python = VENV / "bin" / "python"
    check = [str(python), "-c", "import tf_keras, tensorflow_model_optimization, tensorboard"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    print(f"Creating {VENV.relative_to(shared.REPO)} with {', '.join(TFMOT_REQUIREMENTS)} ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *TFMOT_REQUIREMENTS], check=True)
    return python


def budget(args, model: str) -> dict:
    """The fine-tuning budget of ``model``: the same for both tools."""
    samples = args.epoch_samples or shared.MODELS[model][2]
    return {"epochs": args.epochs, "epoch_samples": samples, "batch_size": args.batch_size,
            "learning_rate": args.learning_rate, "frequency": args.frequency, "ramp": 0.5,
            "pretrain_scale": args.pretrain_scale}


def check_budget(cells_dir: Path, args) -> None:
    """Refuses to mix cells trained with another budget into this run's results."""
    for path in sorted(cells_dir.glob("*.json")):
        cell = json.loads(path.read_text())
        found, expected = cell["budget"], budget(args, cell["model"])
        if cell["model"] in args.models and found != expected:
            raise SystemExit(f"{path.name} was trained with budget {found}, not {expected}. "
                             f"Use another --name, or delete {cells_dir} to start over.")


def run(command: list[str], env: dict | None = None) -> None:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    result = subprocess.run(command, env=env, cwd=shared.REPO)
    if result.returncode != 0:
        raise SystemExit(f"{Path(command[1]).name} failed (exit {result.returncode}); the cells written so far are kept.")


def job_for(args, model: str, seed: int, out: Path) -> dict:
    epochs = max(1, round(shared.MODELS[model][1] * args.pretrain_scale))
    return {**budget(args, model), "budget": budget(args, model), "model": model, "seed": seed, "data_dir": str(args.data_dir),
            "sparsities": [0.0, *args.sparsities], "cells_dir": str(out / "cells"),
            "pretrain_epochs": epochs, "dense_json": str(out / "dense" / f"{model}_seed{seed}.json"),
            "dense_npz": str(shared.CACHE / f"dense_{model}_seed{seed}_e{epochs}.npz"),
            "weights_dir": str(shared.CACHE / args.name)}


def run_job(job: dict, tool: str, tfmot_python: Path | None) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(job, f)
    try:
        if tool.startswith("keras_prune"):
            run([sys.executable, str(shared.HERE / "runner_keras_prune.py"), f.name, tool])
        else:
            run([str(tfmot_python), str(shared.HERE / "runner_tfmot.py"), f.name], {"TF_USE_LEGACY_KERAS": "1"})
    finally:
        os.unlink(f.name)


def complete_tfmot_cells(job: dict) -> None:
    """Adds what needs keras-prune to tfmot's cells: the .kpsparse size of its stripped weights,
    and the accuracy of those weights in the equivalent Keras 3 model (a check that both
    worlds compute the same function)."""
    import keras
    import numpy as np

    import keras_prune

    data = None
    for sparsity in job["sparsities"]:
        stem = shared.cell_name(job["model"], sparsity, job["seed"], "tfmot")
        path = Path(job["cells_dir"]) / f"{stem}.json"
        cell = json.loads(path.read_text()) if path.exists() else None
        if cell is None or "sparse_bytes" in cell:
            continue
        data = data or shared.load_data(Path(job["data_dir"]), job["model"])
        model = shared.build_model(job["model"], keras)
        model.set_weights(shared.load_weights_npz(Path(job["weights_dir"]) / f"{stem}.npz"))
        with tempfile.TemporaryDirectory() as folder:
            cell["sparse_bytes"] = keras_prune.export_sparse(model, Path(folder) / "m.kpsparse").stat().st_size
        logits = np.asarray(model.predict(data["x_test"], batch_size=1000, verbose=0))
        cell["accuracy_in_keras3"] = shared.accuracy(logits, data["y_test"])
        shared.write_json(path, cell)


def main(argv=None) -> None:
    args = parse_args(argv)
    out = shared.RESULTS / args.name
    check_budget(out / "cells", args)
    if args.report_only:
        args.seeds = []
    tfmot_python = ensure_tfmot_env() if "tfmot" in args.tools and args.seeds else None
    for seed in args.seeds:
        for model in args.models:
            job = job_for(args, model, seed, out)
            if not Path(job["dense_npz"]).exists():
                print(f"pretraining {model} seed {seed} ({job['pretrain_epochs']} epochs)", flush=True)
                run_job({**job, "pretrain": True}, "keras_prune", None)
            tools = list(args.tools) if seed % 2 == 0 else list(reversed(args.tools))  # alternate who goes first
            for tool in tools:
                run_job(job, tool, tfmot_python)
                if tool == "tfmot":
                    complete_tfmot_cells(job)
    import page

    given = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--report-only"]
    command = " ".join([".venv/bin/python benchmarks/tfmot_compare/harness.py",
                        *([] if "--data-dir" in given else ["--data-dir ../shared/data"]), *given])
    page.write_all(args.name, out, {model: budget(args, model) for model in shared.MODELS},
                   page=None if (args.no_page or args.quick) else shared.REPO / "docs" / "results.md", command=command)


if __name__ == "__main__":
    main()
