"""``keras-prune finetune``: gradual pruning while fine-tuning on the user's data, resumable."""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path

from keras_prune.cli import CLIError
from keras_prune.cli._common import (
    add_model_arguments,
    add_output_arguments,
    check_output,
    fraction,
    load,
    print_report,
    save,
)
from keras_prune.cli.prune_model import layer_filter, parse_pattern

DESCRIPTION = """\
Prune MODEL gradually to --sparsity while fine-tuning it on DATA, keeping pruned weights at
exactly 0, then strip the pruning wrappers and write OUT.

DATA is a .npz file with x_train and y_train (optionally x_val and y_val), or an image folder
(<class>/<image> folders, optionally under train/ and val/), resized to the model's input and
multiplied by --image-scale. Loss, optimizer and metrics come from MODEL's saved compile
settings; --loss, --metrics, --optimizer and --learning-rate override them.

--schedule polynomial (default) raises the sparsity from 0 on tfmot's cubic curve over the
first two thirds of the epochs, so the last epochs recover at the final sparsity; constant
prunes to --sparsity at once and refreshes the masks every --frequency steps.

After every epoch a checkpoint goes to --checkpoint-dir (default OUT.ckpt). If the run stops
(Ctrl-C, a crash), run the same command again to resume from the last finished epoch; the
checkpoint is removed when OUT is written."""

EXAMPLES = """\
examples:
  keras-prune finetune model.keras --data train.npz -o pruned.keras --sparsity 0.9 --epochs 4
  keras-prune finetune model.keras --data images/ -o pruned.keras --sparsity 0.8 --pattern block:1x4"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "finetune",
        help="gradual pruning with fine-tuning on your data (resumable after Ctrl-C)",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(parser)
    parser.add_argument("--data", required=True, metavar="DATA", help=".npz file or image folder (see above)")
    add_output_arguments(parser)
    parser.add_argument("--sparsity", metavar="S", help="final fraction of weights to prune, in [0, 1)")
    parser.add_argument("--epochs", type=int, default=4, help="fine-tuning epochs (default: 4)")
    parser.add_argument("--schedule", choices=("polynomial", "constant"), default="polynomial",
                        help="how sparsity rises (default: polynomial)")
    parser.add_argument("--frequency", type=int, metavar="STEPS",
                        help="update the masks every STEPS training steps (default: about 10 updates per ramp, at most every 100 steps)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size (default: 32)")
    parser.add_argument("--scope", choices=("layer", "global"), default="layer",
                        help="rank weights per tensor (default) or across all pruned layers")
    parser.add_argument("--pattern", default="unstructured", metavar="unstructured|M:N|block:RxC",
                        help="sparsity pattern, as in `keras-prune prune` (M:N prunes M of every N)")
    parser.add_argument("--include", metavar="REGEX", help="prune only layers whose path matches REGEX")
    parser.add_argument("--exclude", metavar="REGEX", help="leave out layers whose path matches REGEX")
    parser.add_argument("--loss", help="loss name, such as sparse_categorical_crossentropy")
    parser.add_argument("--metrics", help="comma-separated metric names, such as accuracy")
    parser.add_argument("--optimizer", help="optimizer name, such as adam or sgd")
    parser.add_argument("--learning-rate", type=float, metavar="LR", help="learning rate for the optimizer")
    parser.add_argument("--validation-split", type=float, default=0.0, metavar="F",
                        help="hold out this fraction of the training data if DATA has no validation part")
    parser.add_argument("--image-scale", type=float, default=1 / 255, metavar="X",
                        help="multiply image pixels (0-255) by X (default: 1/255; use 1 if the model rescales)")
    parser.add_argument("--checkpoint-dir", metavar="DIR", help="where to keep the resumable checkpoint (default: OUT.ckpt)")
    parser.add_argument("--restart", action="store_true", help="discard an existing checkpoint and start over")
    parser.add_argument("--quiet", action="store_true", help="hide the progress display")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import keras

    import keras_prune as kp
    from keras_prune.training_data import load_training_data

    pattern = parse_pattern(args.pattern)
    sparsity = fraction("--sparsity", args.sparsity)
    if sparsity is None and "sparsity_m_by_n" not in pattern:
        raise CLIError("Give the final sparsity with --sparsity S, such as --sparsity 0.8.")
    if args.epochs < 1 or args.batch_size < 1:
        raise CLIError(f"--epochs and --batch-size must be >= 1. Received: --epochs {args.epochs} --batch-size {args.batch_size}")
    check_output(args)
    checkpoint = Checkpoint(Path(args.checkpoint_dir or f"{args.output}.ckpt"), signature(args))
    if args.restart:
        checkpoint.clear()

    model = load(args)
    data = load_training_data(args.data, model, validation_split=args.validation_split, image_scale=args.image_scale)
    config = compile_config(keras, model, args)
    steps_per_epoch = math.ceil(len(data.x_train) / args.batch_size)
    schedule = make_schedule(kp, args.schedule, sparsity or 0.0, args.epochs, steps_per_epoch, args.frequency)
    dense_scores = evaluate(model, config, data, args.batch_size)

    wrapped, done = checkpoint.load(args.unsafe)
    if wrapped is None:
        policy = filter_policy(layer_filter(model, args.include, args.exclude))
        wrapped = kp.prune_low_magnitude(model, schedule, pruning_policy=policy, scope=args.scope, **pattern)
        wrapped.compile_from_config(config)
    else:
        print(f"Resuming from epoch {done}/{args.epochs} (checkpoint {checkpoint.folder})", file=sys.stderr)
    verbose = 0 if args.quiet else (1 if sys.stdout.isatty() else 2)
    try:
        if done < args.epochs:
            wrapped.fit(
                data.x_train, data.y_train, validation_data=data.validation, batch_size=args.batch_size,
                epochs=args.epochs, initial_epoch=done, verbose=verbose,
                callbacks=[kp.UpdatePruningStep(), checkpoint.callback(keras)],
            )
    except KeyboardInterrupt:
        print(f"Stopped; rerun the same command to resume from {checkpoint.folder}.", file=sys.stderr)
        raise
    stripped = kp.strip_pruning(wrapped)
    stripped.compile_from_config(config)
    pruned_scores = evaluate(stripped, config, data, args.batch_size)
    save(stripped, args)
    checkpoint.clear()
    report = kp.summarize(stripped)
    print_report(report, title=f"{args.output} (fine-tuned from {args.model})")
    for name, before in dense_scores.items():
        print(f"validation {name}: dense {before:.4f} -> pruned {pruned_scores[name]:.4f}")
    return 0


def filter_policy(wanted):
    """A ``PruningPolicy`` allowing the layers ``wanted(layer)`` accepts (all if None)."""
    from keras_prune import PruningPolicy

    class FilterPolicy(PruningPolicy):
        def allow_pruning(self, layer):
            return wanted is None or wanted(layer)

    return FilterPolicy()


def compile_config(keras, model, args) -> dict:
    """The model's saved compile settings with the command-line overrides applied."""
    config = dict(model.get_compile_config() or {}) if model.compiled else {}
    try:
        if args.loss:
            keras.losses.get(args.loss)
            config["loss"] = args.loss
        if args.metrics:
            config["metrics"] = [m.strip() for m in args.metrics.split(",") if m.strip()]
            for metric in config["metrics"]:
                keras.metrics.get(metric)
        if args.optimizer or args.learning_rate or "optimizer" not in config:
            optimizer = keras.optimizers.get(args.optimizer or config.get("optimizer") or "adam")
            if args.learning_rate:
                optimizer = optimizer.__class__.from_config({**optimizer.get_config(), "learning_rate": args.learning_rate})
            config["optimizer"] = keras.optimizers.serialize(optimizer)
    except ValueError as error:
        raise CLIError(f"{str(error).splitlines()[0]} Check --loss, --metrics and --optimizer.") from None
    if not config.get("loss"):
        raise CLIError(
            f"'{args.model}' was saved without a loss; pass --loss (for example "
            "--loss sparse_categorical_crossentropy --metrics accuracy)."
        )
    return config


def make_schedule(kp, kind: str, sparsity: float, epochs: int, steps_per_epoch: int, frequency: int | None):
    """A PolynomialDecay over the first 2/3 of training, or a ConstantSparsity."""
    ramp = steps_per_epoch * max(1, math.ceil(2 * epochs / 3)) if epochs > 1 else steps_per_epoch - 1
    if frequency is not None and frequency < 1:
        raise CLIError(f"--frequency must be >= 1. Received: --frequency {frequency}")
    frequency = frequency or max(1, min(100, ramp // 10))
    if kind == "constant" or ramp < frequency:
        return kp.ConstantSparsity(sparsity, begin_step=0, frequency=frequency)
    end_step = frequency * (ramp // frequency)  # on an update step, so the target is reached
    return kp.PolynomialDecay(0.0, sparsity, begin_step=0, end_step=end_step, frequency=frequency)


def evaluate(model, config, data, batch_size) -> dict:
    """Validation metrics of ``model`` (compiled with ``config``), or {} without validation data."""
    if data.validation is None:
        return {}
    model.compile_from_config(config)
    scores = model.evaluate(*data.validation, batch_size=batch_size, verbose=0, return_dict=True)
    return {name: float(value) for name, value in scores.items()}


def signature(args: argparse.Namespace) -> dict:
    """What identifies a run: a checkpoint is resumed only by the same command on the same files."""
    model = Path(args.model).resolve()
    stat = model.stat() if model.is_file() else None
    keys = ("data", "sparsity", "epochs", "schedule", "frequency", "batch_size", "scope", "pattern",
            "include", "exclude", "loss", "metrics", "optimizer", "learning_rate", "validation_split",
            "image_scale", "weights")
    return {
        "model": str(model),
        "model_bytes": stat.st_size if stat else None,
        "model_mtime_ns": stat.st_mtime_ns if stat else None,
        **{key: getattr(args, key) for key in keys},
        "data": str(Path(args.data).resolve()),
    }


class Checkpoint:
    """A folder holding the pruning model after the last finished epoch, and what run it is."""

    def __init__(self, folder: Path, run_signature: dict):
        self.folder = folder
        self.signature = run_signature
        self.state = folder / "state.json"

    def load(self, unsafe: bool):
        """``(model, finished epochs)`` from the checkpoint, or ``(None, 0)`` if there is none."""
        from keras_prune.io import load_model

        if not self.state.is_file():
            return None, 0
        state = json.loads(self.state.read_text())
        if state.get("signature") != self.signature:
            raise CLIError(
                f"Checkpoint '{self.folder}' belongs to a different run (other model, data or "
                "options); pass --restart to discard it, or --checkpoint-dir to keep both."
            )
        return load_model(self.folder / state["model"], safe_mode=not unsafe), int(state["epochs_done"])

    def callback(self, keras):
        """A callback writing the checkpoint atomically at the end of every epoch."""
        checkpoint = self

        class EpochCheckpoint(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                checkpoint.save(self.model, epoch + 1)

        return EpochCheckpoint()

    def save(self, model, epochs_done: int) -> None:
        from keras_prune.io import atomic_write

        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"epoch-{epochs_done}.keras"
        atomic_write(self.folder / name, model.save)
        state = {"signature": self.signature, "epochs_done": epochs_done, "model": name}
        atomic_write(self.state, lambda tmp: Path(tmp).write_text(json.dumps(state, indent=2)))
        for old in self.folder.glob("epoch-*.keras"):  # the state now points at the new file
            if old.name != name:
                old.unlink()

    def clear(self) -> None:
        if self.folder.is_dir():
            shutil.rmtree(self.folder)
