"""Options and steps shared by the model subcommands: load, validate, save, print."""

from __future__ import annotations

import argparse
import math

from keras_prune.cli import CLIError

OUTPUT_SUFFIXES = (".keras", ".h5")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """MODEL, --weights and --unsafe."""
    parser.add_argument(
        "model", metavar="MODEL",
        help="model file: .keras, legacy .h5, or a .json architecture with --weights",
    )
    parser.add_argument(
        "--weights", metavar="FILE",
        help="weights file (.weights.h5 or .h5) for a .json architecture MODEL",
    )
    parser.add_argument(
        "--unsafe", action="store_true",
        help="allow model files that carry code (Lambda layers); only for files you trust",
    )


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """-o/--output, --overwrite and --keep-optimizer."""
    parser.add_argument(
        "-o", "--output", required=True, metavar="OUT",
        help="where to write the model (.keras or .h5); never the input file",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.add_argument(
        "--keep-optimizer", action="store_true",
        help="also save the optimizer's state (by default OUT keeps the compile settings but "
        "not the optimizer's variables, which can be twice the size of the weights)",
    )


def check_output(args: argparse.Namespace, suffixes: tuple[str, ...] = OUTPUT_SUFFIXES):
    """Validates ``args.output`` before any work (see :func:`keras_prune.io.check_output_path`)."""
    from keras_prune.io import check_output_path

    inputs = [p for p in (args.model, getattr(args, "weights", None)) if p]
    return check_output_path(args.output, overwrite=args.overwrite, inputs=inputs, suffixes=suffixes)


def load(args: argparse.Namespace):
    """Loads MODEL; importing keras_prune first registers its serializable classes."""
    import keras_prune  # noqa: F401  (registers PruneLowMagnitude and the schedules)
    from keras_prune.io import load_model

    return load_model(args.model, weights=args.weights, safe_mode=not args.unsafe)


def save(model, args: argparse.Namespace) -> None:
    """Writes ``model`` to OUT atomically (a temporary file, then a rename), with its compile
    settings but without the optimizer's state unless --keep-optimizer."""
    from keras_prune.io import save_model

    keep = getattr(args, "keep_optimizer", False)
    save_model(model, args.output, overwrite=args.overwrite, include_optimizer=keep)


def fraction(flag: str, text: str | None) -> float | None:
    """Parses a flag's value as a fraction in [0, 1) with a one-line error naming the fix."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise CLIError(f"{flag} must be a number in [0, 1), such as 0.8. Received: {flag} {text}") from None
    if not (math.isfinite(value) and 0.0 <= value < 1.0):
        raise CLIError(f"{flag} must be in [0, 1), such as 0.8. Received: {flag} {text}")
    return value


def non_negative(flag: str, text: str | None) -> float | None:
    """Parses a flag's value as a finite number >= 0."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0.0):
        raise CLIError(f"{flag} must be a finite number >= 0, such as 0.01. Received: {flag} {text}")
    return value


def print_report(report, title: str) -> None:
    """Prints the per-layer table and totals to stdout."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal:  # piped or captured: do not squeeze the table into 80 columns
        console = Console(width=150)
    report.print(console, title=title)
