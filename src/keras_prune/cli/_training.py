"""Fine-tuning shared by ``finetune`` and ``shrink``: the data and compile flags, training that
stops on a NaN and resumes from its checkpoint (see :mod:`keras_prune.cli._checkpoint`), and
the trained optimizer's state for --keep-optimizer."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from keras_prune.cli import CLIError
from keras_prune.cli._checkpoint import Checkpoint

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
    """MODEL, with any gradual-pruning state stripped (a note on stderr says so)."""
    from keras_prune import strip_pruning
    from keras_prune.callbacks import collect_pruning
    from keras_prune.cli._common import load

    model = load(args)
    if not collect_pruning(model):
        return model
    print(f"note: '{args.model}' is a model being pruned (it holds pruning masks); stripped them "
          "first, as `keras-prune strip` does.", file=sys.stderr)
    stripped = strip_pruning(model)
    if model.compiled:
        stripped.compile_from_config(model.get_compile_config())
    return stripped


def compile_config(keras, model, args) -> dict:
    """The model's saved compile settings with the command-line overrides applied."""
    from keras_prune import _backend
    from keras_prune.io import error_summary

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
        raise CLIError(f"{error_summary(error)} Check --loss, --metrics and --optimizer.") from None
    if not config.get("loss"):
        raise CLIError(
            f"'{args.model}' was saved without a loss; pass --loss (for example "
            "--loss sparse_categorical_crossentropy --metrics accuracy)."
        )
    limit = getattr(_backend.current(), "MAX_STEPS_PER_EXECUTION", None)
    if limit is not None and (config.get("steps_per_execution") or 1) > limit:
        # Only speed depends on it: pruning counts steps the same however they are batched.
        print(f"note: '{args.model}' was compiled with steps_per_execution={config['steps_per_execution']}; "
              f"the {keras.backend.backend()} backend trains with at most {limit}, so this run does.",
              file=sys.stderr)
        config["steps_per_execution"] = limit
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
    from keras_prune.io import error_summary

    if data is None or data.validation is None:
        return {}
    model.compile_from_config(config)
    try:
        scores = model.evaluate(*data.validation, batch_size=batch_size, verbose=0, return_dict=True)
    except (ValueError, TypeError) as error:
        raise CLIError(f"Evaluating on the validation data failed: {error_summary(error)}") from error
    return {name: float(value) for name, value in scores.items()}


def fit_resumably(model, data, args, checkpoint: Checkpoint, done: int, callbacks=()) -> None:
    """``model.fit`` from epoch ``done`` to ``args.epochs``, checkpointing every good epoch.

    Raises:
        CLIError: the loss or the weights became NaN or infinite, or anything else failed
            (Keras refused the data, a TensorFlow op failed, ...); either way the message says
            which epoch the checkpoint keeps. Ctrl-C stays a ``KeyboardInterrupt``.
    """
    import keras

    from keras_prune.io import error_summary

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
    except Exception as error:  # TensorFlow, JAX and Keras raise many types; all keep the hint
        raise CLIError(f"Training failed: {type(error).__name__}: {error_summary(error)}"
                       f"{checkpoint.kept()}") from error


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


def keep_optimizer_state(optimizer, variables: list, model) -> None:
    """For --keep-optimizer: copies the state of ``optimizer``, which trained ``variables``, into
    ``model``'s compiled optimizer, so OUT resumes training where fine-tuning stopped.

    Stripping builds new variables, which the trained optimizer does not know; its state fits
    them only when they match ``variables`` one to one (same paths and shapes), as after
    ``strip_pruning``. Otherwise a one-line note says OUT's optimizer starts fresh.
    """
    reason = _mismatch(optimizer, variables, model) or _copy_state(optimizer, model)
    if reason:
        note_fresh_optimizer(reason)


def note_fresh_optimizer(reason: str) -> None:
    """The one line saying --keep-optimizer cannot keep the trained state, and why."""
    print(f"note: --keep-optimizer: {reason}, so OUT's optimizer starts fresh.", file=sys.stderr)


def _mismatch(optimizer, variables: list, model) -> str | None:
    """Why the state of ``optimizer`` (trained on ``variables``) cannot go to ``model``, or None."""
    fresh = getattr(model, "optimizer", None)
    if optimizer is None or not optimizer.built or fresh is None:
        return "there is no trained optimizer state for OUT"
    if type(fresh) is not type(optimizer):
        return f"OUT is compiled with {type(fresh).__name__}, not the trained {type(optimizer).__name__}"
    trained = [(v.path, tuple(v.shape)) for v in variables]
    if trained != [(v.path, tuple(v.shape)) for v in model.trainable_variables]:
        return "OUT's weights are not the ones the optimizer trained"
    return None


def _copy_state(source, model) -> str | None:
    """Assigns ``source``'s variables (step count, moments, ...) to ``model``'s optimizer, or says
    why not."""
    target = model.optimizer
    if not target.built:
        target.build(model.trainable_variables)
    if [tuple(v.shape) for v in source.variables] != [tuple(v.shape) for v in target.variables]:
        return "the trained optimizer's variables do not fit OUT's"
    for new, old in zip(target.variables, source.variables):
        new.assign(old)
    return None
