"""Fine-tuning shared by ``finetune`` and ``shrink``: the data and compile flags, a checkpoint
after every epoch, and resuming the same run after Ctrl-C or a crash."""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import re
import sys
from pathlib import Path

from keras_prune.cli import CLIError

DATA_HELP = """\
DATA is a .npz file with x_train and y_train (optionally x_val and y_val, or x_test and
y_test), an MNIST-style folder of IDX files, or an image folder (<class>/<image> folders,
optionally under train/ and val/), resized to the model's input and multiplied by
--image-scale. Loss, optimizer and metrics come from MODEL's saved compile settings;
--loss, --from-logits, --metrics, --optimizer and --learning-rate override them.

After every epoch a checkpoint goes to --checkpoint-dir (default OUT.ckpt), a folder that
keras-prune creates and marks as its own; it refuses a folder that already exists and is not
such a checkpoint. If the run stops (Ctrl-C, a crash), run the same command again to resume
from the last finished epoch; with --restart the old checkpoint is ignored and replaced as new
epochs finish. Training stops with an error, writing nothing, as soon as the loss or the
weights become NaN or infinite; the checkpoint keeps the last good epoch. Only when OUT is
written does keras-prune delete its checkpoint files, and the folder if nothing else is in it."""

# The flags that define a fine-tuning run, besides each command's own.
TRAINING_KEYS = ("data", "epochs", "batch_size", "loss", "from_logits", "metrics", "optimizer",
                 "learning_rate", "validation_split", "image_scale", "weights")

MAX_EPOCHS = 10_000  # more is a typo (or a job for a training script), not a fine-tuning run


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
    parser.add_argument("--restart", action="store_true",
                        help="start over, ignoring an existing checkpoint (replaced as new epochs finish)")
    parser.add_argument("--quiet", action="store_true", help="hide the progress display")


def check_training_flags(args: argparse.Namespace) -> None:
    """One-line errors for flag values that cannot work, before anything is loaded."""
    if not (0 <= args.epochs <= MAX_EPOCHS) or args.batch_size < 1:
        raise CLIError(f"--epochs must be in [0, {MAX_EPOCHS}] and --batch-size >= 1. Received: "
                       f"--epochs {args.epochs} --batch-size {args.batch_size}")
    if args.learning_rate is not None and not (math.isfinite(args.learning_rate) and args.learning_rate > 0):
        raise CLIError(f"--learning-rate must be a finite number > 0, such as 0.001. Received: "
                       f"--learning-rate {args.learning_rate}")
    if not 0.0 <= args.validation_split < 1.0:
        raise CLIError(f"--validation-split must be in [0, 1), such as 0.1. Received: "
                       f"--validation-split {args.validation_split}")
    if not (math.isfinite(args.image_scale) and args.image_scale > 0):
        raise CLIError(f"--image-scale must be a finite number > 0, such as 0.00392 (1/255). Received: "
                       f"--image-scale {args.image_scale}")
    if args.from_logits and not args.loss:
        raise CLIError("--from-logits goes with --loss NAME, such as --loss sparse_categorical_crossentropy.")
    if args.data and not Path(args.data).exists():
        raise CLIError(f"--data '{args.data}' does not exist. Check the path.")


def load_data(args: argparse.Namespace, model):
    """The user's DATA, checked against ``model`` (see :func:`keras_prune.training_data.load_training_data`).

    Warns (one line on stderr) when fine-tuning batches would be larger than the training set.
    """
    from keras_prune.training_data import load_training_data

    data = load_training_data(args.data, model, validation_split=args.validation_split,
                              image_scale=args.image_scale)
    samples = len(data.x_train)
    if args.epochs and args.batch_size > samples:
        print(f"warning: --batch-size {args.batch_size} exceeds the {samples} training samples; every "
              f"epoch is a single step of {samples}.", file=sys.stderr)
    return data


def load_unpruned(args: argparse.Namespace):
    """MODEL, with any gradual-pruning wrappers stripped (a note on stderr says so)."""
    from keras_prune import strip_pruning
    from keras_prune.callbacks import collect_wrappers
    from keras_prune.cli._common import load

    model = load(args)
    wrappers = collect_wrappers(model)
    if not wrappers:
        return model
    print(f"note: '{args.model}' holds {len(wrappers)} pruning wrappers (a pruning checkpoint); "
          "stripped them first, as `keras-prune strip` does.", file=sys.stderr)
    stripped = strip_pruning(model)
    if model.compiled:
        stripped.compile_from_config(model.get_compile_config())
    return stripped


def describe(error: BaseException) -> str:
    """The whole message of ``error`` on one line: Keras often puts the cause after a generic
    first line ("Exception encountered when calling ...")."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    text = " ".join(line.strip() for line in text.splitlines() if line.strip())
    return text or type(error).__name__


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
        if args.optimizer or args.learning_rate is not None or "optimizer" not in config:
            optimizer = keras.optimizers.get(args.optimizer or config.get("optimizer") or "adam")
            if args.learning_rate is not None:
                optimizer = optimizer.__class__.from_config({**optimizer.get_config(), "learning_rate": args.learning_rate})
            config["optimizer"] = keras.optimizers.serialize(optimizer)
    except ValueError as error:
        raise CLIError(f"{describe(error)} Check --loss, --metrics and --optimizer.") from None
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
        raise CLIError(f"--loss {name} is not a Keras loss class; try sparse_categorical_crossentropy.")
    try:
        return keras.losses.serialize(cls(from_logits=True))
    except TypeError:
        raise CLIError(f"--loss {name} has no logits form; drop --from-logits.") from None


def evaluate(model, config, data, batch_size) -> dict:
    """Validation metrics of ``model`` (compiled with ``config``), or {} without validation data."""
    if data is None or data.validation is None:
        return {}
    model.compile_from_config(config)
    try:
        scores = model.evaluate(*data.validation, batch_size=batch_size, verbose=0, return_dict=True)
    except (ValueError, TypeError) as error:
        raise CLIError(f"Evaluating on the validation data failed: {describe(error)}") from error
    return {name: float(value) for name, value in scores.items()}


def fit_resumably(model, data, args, checkpoint: Checkpoint, done: int, callbacks=()) -> None:
    """``model.fit`` from epoch ``done`` to ``args.epochs``, checkpointing every good epoch.

    Raises:
        CLIError: the loss or the weights became NaN or infinite (the checkpoint keeps the last
            good epoch), or Keras refused the data or the model.
    """
    import keras

    if done >= args.epochs:
        return
    verbose = 0 if args.quiet else (1 if sys.stdout.isatty() else 2)
    try:
        model.fit(
            data.x_train, data.y_train, validation_data=data.validation, batch_size=args.batch_size,
            epochs=args.epochs, initial_epoch=done, verbose=verbose,
            callbacks=[*callbacks, finite_guard(keras), checkpoint.callback(keras)],
        )
    except KeyboardInterrupt:
        print(f"Stopped; rerun the same command to resume from {checkpoint.folder}.", file=sys.stderr)
        raise
    except NonFiniteTraining as error:
        raise CLIError(f"{error} Nothing was written to '{args.output}'.{checkpoint.kept()} Lower "
                       "--learning-rate (with --restart), or check DATA.") from None
    except (ValueError, TypeError) as error:
        raise CLIError(f"Training failed: {describe(error)}{checkpoint.kept()}") from error


class NonFiniteTraining(Exception):
    """The loss or a weight became NaN or infinite: training must stop before a checkpoint."""


def finite_guard(keras):
    """A callback raising :class:`NonFiniteTraining` on a non-finite loss (after every batch)
    or non-finite weights (at the end of every epoch, before the checkpoint is written)."""

    class StopOnNonFinite(keras.callbacks.Callback):
        epoch = 0

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            _check_loss(logs, f"epoch {self.epoch + 1}, step {batch + 1}")

        def on_epoch_end(self, epoch, logs=None):
            _check_loss(logs, f"epoch {epoch + 1}")
            bad = [v.path for v in self.model.weights if not _finite(keras.ops.convert_to_numpy(v))]
            if bad:
                raise NonFiniteTraining(f"Training diverged: weights {', '.join(bad[:3])} became NaN or "
                                        f"infinite in epoch {epoch + 1}.")

    return StopOnNonFinite()


def _check_loss(logs, where: str) -> None:
    loss = (logs or {}).get("loss")
    if loss is not None and not math.isfinite(float(loss)):
        raise NonFiniteTraining(f"Training diverged: the loss became {float(loss)} at {where}.")


def _finite(values) -> bool:
    import numpy as np

    values = np.asarray(values)
    return not np.issubdtype(values.dtype, np.inexact) or bool(np.all(np.isfinite(values)))


def signature(args: argparse.Namespace, keys: tuple[str, ...]) -> dict:
    """What identifies a run: a checkpoint is resumed only by the same command on the same files
    (same paths, sizes and modification times)."""
    return {
        "command": args.command,
        **_stamp("model", args.model),
        **{key: getattr(args, key) for key in (*keys, *TRAINING_KEYS)},
        **_stamp("data", args.data),
    }


def _stamp(name: str, path) -> dict:
    """``path`` resolved, with its size and modification time when it is a file."""
    resolved = Path(path).resolve() if path else None
    stat = resolved.stat() if resolved is not None and resolved.is_file() else None
    return {
        name: str(resolved) if resolved else None,
        f"{name}_bytes": stat.st_size if stat else None,
        f"{name}_mtime_ns": stat.st_mtime_ns if stat else None,
    }


MARKER = ".keras-prune-checkpoint"
MARKER_TEXT = "keras-prune made this folder for a resumable checkpoint; it deletes it once the run succeeds.\n"
# Checkpoint files, and the temporary names atomic_write gives them while they are written.
OWN_FILES = (MARKER, "state.json", "epoch-*.keras", ".epoch-*.keras", ".state.*.json")


class Checkpoint:
    """A folder holding the model after the last finished epoch, and what run it is.

    keras-prune creates the folder itself, with a marker file, and only ever deletes its own
    files in it: a folder that exists and is not such a checkpoint is refused before any work.
    """

    def __init__(self, args: argparse.Namespace, keys: tuple[str, ...]):
        self.folder = Path(args.checkpoint_dir or f"{args.output}.ckpt")
        self.signature = signature(args, keys)
        self.state = self.folder / "state.json"
        self.epochs_done = 0  # of this run, once resumed or saved
        check_folder(self.folder, args)
        self._resumable = None if args.restart else self._read_state()

    def _read_state(self) -> dict | None:
        if not self.state.is_file():
            return None
        try:
            state = json.loads(self.state.read_text())
        except (OSError, ValueError) as error:
            raise CLIError(f"Checkpoint '{self.folder}' cannot be read ({describe(error)}); pass "
                           "--restart to start over.") from None
        if not isinstance(state, dict) or state.get("signature") != self.signature:
            raise CLIError(
                f"Checkpoint '{self.folder}' belongs to a different run (other model, data or "
                "options); pass --restart to discard it, or --checkpoint-dir to keep both."
            )
        return state

    def load(self, unsafe: bool):
        """``(model, finished epochs)`` from the checkpoint, or ``(None, 0)`` if there is none
        (or ``--restart`` was given)."""
        from keras_prune.io import load_model

        state = self._resumable
        if state is None:
            return None, 0
        try:
            model = load_model(self.folder / str(state["model"]), safe_mode=not unsafe)
            self.epochs_done = int(state["epochs_done"])
        except (KeyError, TypeError, ValueError) as error:
            raise CLIError(f"Checkpoint '{self.folder}' cannot be loaded ({describe(error)}); pass "
                           "--restart to start over.") from None
        print(f"Resuming from epoch {self.epochs_done}/{self.signature['epochs']} "
              f"(checkpoint {self.folder})", file=sys.stderr)
        return model, self.epochs_done

    def callback(self, keras):
        """A callback writing the checkpoint atomically at the end of every epoch."""
        checkpoint = self

        class EpochCheckpoint(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                checkpoint.save(self.model, epoch + 1)

        return EpochCheckpoint()

    def save(self, model, epochs_done: int) -> None:
        from keras_prune.io import atomic_write

        if not self.folder.is_dir():
            self.folder.mkdir()
            (self.folder / MARKER).write_text(MARKER_TEXT)
        name = f"epoch-{epochs_done}.keras"
        atomic_write(self.folder / name, model.save)
        state = {"signature": self.signature, "epochs_done": epochs_done, "model": name}
        atomic_write(self.state, lambda tmp: Path(tmp).write_text(json.dumps(state, indent=2)))
        self.epochs_done = epochs_done
        for old in self.folder.glob("epoch-*.keras"):  # the state now points at the new file
            if old.name != name:
                old.unlink()

    def kept(self) -> str:
        """A sentence saying which epoch the checkpoint keeps for this run, or ``""``."""
        if not self.epochs_done:
            return ""
        return (f" Checkpoint '{self.folder}' keeps epoch {self.epochs_done}/{self.signature['epochs']}; "
                "the same command resumes from it.")

    def clear(self) -> None:
        """Deletes keras-prune's own files, then the folder if nothing else is in it. Call it
        only once the run has succeeded (OUT is written)."""
        if not (self.folder / MARKER).is_file():
            return
        for path in self.folder.iterdir():
            if _own(path.name) and path.name != MARKER and path.is_file():
                path.unlink()
        (self.folder / MARKER).unlink()
        if not any(self.folder.iterdir()):
            self.folder.rmdir()


def _own(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in OWN_FILES)


def check_folder(folder: Path, args: argparse.Namespace) -> None:
    """Refuses a checkpoint folder keras-prune could not safely write and later delete."""
    where = _resolved(folder)
    for flag in ("output", "report"):
        path = getattr(args, flag, None)
        if path and _inside(_resolved(path), where):
            raise CLIError(f"Output '{path}' is inside the checkpoint folder '{folder}', which keras-prune "
                           "empties once the run succeeds; write it elsewhere or pass another --checkpoint-dir.")
    for flag in ("model", "weights", "data"):
        path = getattr(args, flag, None)
        if path and (_inside(_resolved(path), where) or _inside(where, _resolved(path))):
            raise CLIError(f"Checkpoint folder '{folder}' overlaps the input '{path}'; pass --checkpoint-dir "
                           "NEW_FOLDER, a folder that does not exist yet, outside your inputs.")
    if folder.exists():
        _check_existing(folder)
    elif not folder.parent.is_dir():
        raise CLIError(f"Checkpoint folder '{folder}' cannot be created: '{folder.parent}' does not exist; "
                       "create it first, or pass another --checkpoint-dir.")


def _check_existing(folder: Path) -> None:
    if not folder.is_dir():
        raise CLIError(f"Checkpoint folder '{folder}' is a file; pass --checkpoint-dir NEW_FOLDER, a "
                       "folder that does not exist yet.")
    if not (folder / MARKER).is_file():
        raise CLIError(f"Checkpoint folder '{folder}' already exists and is not a keras-prune checkpoint; "
                       "keras-prune only writes (and later deletes) a folder it creates. Pass "
                       "--checkpoint-dir NEW_FOLDER, a folder that does not exist yet.")
    others = sorted(p.name for p in folder.iterdir() if not _own(p.name))
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise CLIError(f"Checkpoint folder '{folder}' holds files keras-prune did not write ({shown}); "
                       "move them out, or pass --checkpoint-dir NEW_FOLDER.")


def _resolved(path) -> Path:
    return Path(path).expanduser().resolve()


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies within it."""
    return path == folder or folder in path.parents
