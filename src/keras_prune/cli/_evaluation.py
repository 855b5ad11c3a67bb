"""Evaluation flags shared by ``analyze`` and ``prune --max-drop``: labelled DATA, the metric,
and the compile settings a model saved without them needs."""

from __future__ import annotations

import argparse
from pathlib import Path

from keras_prune.cli import CLIError

DEFAULT_EVALUATION_SAMPLES = 1024

DATA_HELP = """\
DATA is labelled: a .npz file with x_train and y_train (and optionally x_val/y_val or
x_test/y_test), an MNIST-style folder of IDX files, or an image folder (<class>/<image>).
The metric is measured on its validation (or test) part if it has one, else on its training
part, at most --eval-samples examples; the calibrated methods calibrate on its training part.
The metric is MODEL's first compiled metric unless --metric names another (or loss); a model
saved without compile settings needs --loss (and --metrics)."""


def add_evaluation_arguments(parser: argparse.ArgumentParser, group=None) -> None:
    """--data, --metric, --eval-samples, --loss, --from-logits and --metrics."""
    group = group or parser
    group.add_argument("--data", metavar="DATA", help="labelled .npz file, IDX folder or image folder (see above)")
    group.add_argument("--metric", metavar="NAME",
                       help="metric to watch: a compiled metric such as accuracy, or loss (default: the first)")
    group.add_argument("--eval-samples", type=int, default=DEFAULT_EVALUATION_SAMPLES, metavar="N",
                       help=f"evaluate on at most N examples (default: {DEFAULT_EVALUATION_SAMPLES})")
    group.add_argument("--loss", help="compile with this loss (for a model saved without one)")
    group.add_argument("--from-logits", action="store_true", help="with --loss: the model outputs logits")
    group.add_argument("--metrics", help="with --loss: comma-separated metric names, such as accuracy")


def check_evaluation_flags(args: argparse.Namespace) -> None:
    """One-line errors before anything is loaded."""
    if args.data is None:
        raise CLIError("Give --data DATA: labelled examples to measure the metric on (a .npz file with x_train and "
                       "y_train, an IDX folder or an image folder).")
    if not Path(args.data).exists():
        raise CLIError(f"--data '{args.data}' does not exist. Check the path.")
    if args.eval_samples < 1:
        raise CLIError(f"--eval-samples must be >= 1, such as 1024. Received: --eval-samples {args.eval_samples}")
    if (args.from_logits or args.metrics) and not args.loss:
        raise CLIError("--from-logits and --metrics go with --loss NAME, such as --loss sparse_categorical_crossentropy.")


def evaluation_data(args: argparse.Namespace, model, image_scale: float) -> tuple[tuple, object]:
    """``((x, y) to evaluate on, x to calibrate on)`` from DATA, after compiling ``model`` if asked."""
    import keras

    from keras_prune.cli._training import compile_config
    from keras_prune.training_data import load_training_data

    if args.loss:
        options = argparse.Namespace(loss=args.loss, from_logits=args.from_logits, metrics=args.metrics,
                                     optimizer=None, learning_rate=None, model=args.model)
        model.compile_from_config(compile_config(keras, model, options))
    try:
        data = load_training_data(args.data, model, image_scale=image_scale)
    except ValueError as error:
        raise CLIError(f"--data: {error}") from None
    evaluation = data.validation or (data.x_train, data.y_train)
    return evaluation, data.x_train


def print_table(table) -> None:
    """Prints a rich table to stdout, full width when piped."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal:  # piped or captured: do not squeeze the table into 80 columns
        console = Console(width=150)
    console.print(table)
