"""Fine-tuning shared by ``finetune`` and ``shrink``: the data and compile flags, a checkpoint
after every epoch, and resuming the same run after Ctrl-C or a crash."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from keras_prune.cli import CLIError

DATA_HELP = """\
DATA is a .npz file with x_train and y_train (optionally x_val and y_val, or x_test and
y_test), an MNIST-style folder of IDX files, or an image folder (<class>/<image> folders,
optionally under train/ and val/), resized to the model's input and multiplied by
--image-scale. Loss, optimizer and metrics come from MODEL's saved compile settings;
--loss, --from-logits, --metrics, --optimizer and --learning-rate override them.

After every epoch a checkpoint goes to --checkpoint-dir (default OUT.ckpt). If the run stops
(Ctrl-C, a crash), run the same command again to resume from the last finished epoch; the
checkpoint is removed when OUT is written."""

# The flags that define a fine-tuning run, besides each command's own.
TRAINING_KEYS = ("data", "epochs", "batch_size", "loss", "from_logits", "metrics", "optimizer",
                 "learning_rate", "validation_split", "image_scale", "weights")


def add_training_arguments(parser: argparse.ArgumentParser, *, epochs: int, data_required: bool) -> None:
    """DATA, the compile overrides and the checkpoint flags (see :data:`DATA_HELP`)."""
    parser.add_argument("--data", required=data_required, metavar="DATA",
                        help=".npz file, IDX folder or image folder (see above)")
    parser.add_argument("--epochs", type=int, default=epochs, metavar="N",
                        help=f"fine-tuning epochs (default: {epochs})")
    parser.add_argument("--batch-size", type=int, default=32, metavar="B", help="batch size (default: 32)")
    parser.add_argument("--loss", help="loss name, such as sparse_categorical_crossentropy")
    parser.add_argument("--from-logits", action="store_true", help="with --loss: the model outputs logits")
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


def check_training_flags(args: argparse.Namespace) -> None:
    """One-line errors for flag values that cannot work, before anything is loaded."""
    if args.epochs < 0 or args.batch_size < 1:
        raise CLIError(f"--epochs must be >= 0 and --batch-size >= 1. Received: --epochs {args.epochs} "
                       f"--batch-size {args.batch_size}")
    if args.from_logits and not args.loss:
        raise CLIError("--from-logits goes with --loss NAME, such as --loss sparse_categorical_crossentropy.")
    if args.data and not Path(args.data).exists():
        raise CLIError(f"--data '{args.data}' does not exist. Check the path.")


def load_data(args: argparse.Namespace, model):
    """The user's DATA, checked against ``model`` (see :func:`keras_prune.training_data.load_training_data`)."""
    from keras_prune.training_data import load_training_data

    return load_training_data(args.data, model, validation_split=args.validation_split,
                              image_scale=args.image_scale)


def compile_config(keras, model, args) -> dict:
    """The model's saved compile settings with the command-line overrides applied."""
    config = dict(model.get_compile_config() or {}) if model.compiled else {}
    try:
        if args.loss:
            config["loss"] = _loss(keras, args.loss, args.from_logits)
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


def _loss(keras, name: str, from_logits: bool):
    """``name`` as Keras knows it; with ``from_logits``, its class form, serialized."""
    if not from_logits:
        keras.losses.get(name)  # raises ValueError for an unknown name
        return name
    # sparse_categorical_crossentropy -> SparseCategoricalCrossentropy, which takes from_logits.
    class_name = name if "_" not in name and name[:1].isupper() else "".join(
        part.capitalize() for part in name.split("_"))
    cls = getattr(keras.losses, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, keras.losses.Loss)):
        raise ValueError(f"--loss {name} is not a Keras loss class; try sparse_categorical_crossentropy.")
    try:
        return keras.losses.serialize(cls(from_logits=True))
    except TypeError:
        raise ValueError(f"--loss {name} has no logits form; drop --from-logits.") from None


def evaluate(model, config, data, batch_size) -> dict:
    """Validation metrics of ``model`` (compiled with ``config``), or {} without validation data."""
    if data is None or data.validation is None:
        return {}
    model.compile_from_config(config)
    scores = model.evaluate(*data.validation, batch_size=batch_size, verbose=0, return_dict=True)
    return {name: float(value) for name, value in scores.items()}


def fit_resumably(model, data, args, checkpoint: Checkpoint, done: int, callbacks=()) -> None:
    """``model.fit`` from epoch ``done`` to ``args.epochs``, checkpointing every epoch."""
    import keras

    if done >= args.epochs:
        return
    verbose = 0 if args.quiet else (1 if sys.stdout.isatty() else 2)
    try:
        model.fit(
            data.x_train, data.y_train, validation_data=data.validation, batch_size=args.batch_size,
            epochs=args.epochs, initial_epoch=done, verbose=verbose,
            callbacks=[*callbacks, checkpoint.callback(keras)],
        )
    except KeyboardInterrupt:
        print(f"Stopped; rerun the same command to resume from {checkpoint.folder}.", file=sys.stderr)
        raise


def signature(args: argparse.Namespace, keys: tuple[str, ...]) -> dict:
    """What identifies a run: a checkpoint is resumed only by the same command on the same files."""
    model = Path(args.model).resolve()
    stat = model.stat() if model.is_file() else None
    return {
        "command": args.command,
        "model": str(model),
        "model_bytes": stat.st_size if stat else None,
        "model_mtime_ns": stat.st_mtime_ns if stat else None,
        **{key: getattr(args, key) for key in (*keys, *TRAINING_KEYS)},
        "data": str(Path(args.data).resolve()) if args.data else None,
    }


class Checkpoint:
    """A folder holding the model after the last finished epoch, and what run it is."""

    def __init__(self, args: argparse.Namespace, keys: tuple[str, ...]):
        self.folder = Path(args.checkpoint_dir or f"{args.output}.ckpt")
        self.signature = signature(args, keys)
        self.state = self.folder / "state.json"
        if args.restart:
            self.clear()

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
        model = load_model(self.folder / state["model"], safe_mode=not unsafe)
        print(f"Resuming from epoch {state['epochs_done']}/{self.signature['epochs']} "
              f"(checkpoint {self.folder})", file=sys.stderr)
        return model, int(state["epochs_done"])

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
