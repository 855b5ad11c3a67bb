"""Options and steps shared by the model subcommands: load, validate, save, print."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import math
import sys
from pathlib import Path

from keras_prune.cli import CLIError

OUTPUT_SUFFIXES = (".keras", ".h5")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """MODEL, --weights, --custom-objects and --unsafe."""
    parser.add_argument(
        "model", metavar="MODEL",
        help="model file: .keras or .h5 (Keras 3, or tf.keras/Keras 2), a .json architecture with --weights, "
        "or a tf.keras SavedModel folder; Keras 2 models are translated to Keras 3 and the changes listed",
    )
    parser.add_argument(
        "--weights", metavar="FILE",
        help="weights file (.weights.h5 or .h5) for a .json architecture MODEL",
    )
    parser.add_argument(
        "--custom-objects", metavar="MODULE",
        help="a Python file (module.py) or importable module defining the custom layers and "
        "functions MODEL uses; its public classes and functions are passed to Keras by name",
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


def load(args: argparse.Namespace, *, announce: bool = True):
    """Loads MODEL; importing keras_prune first registers its serializable classes.

    A model read from a Keras 2 file gets its translations printed on stderr unless
    ``announce`` is false (see :func:`print_conversion`).
    """
    import keras_prune  # noqa: F401  (registers PruneLowMagnitude and the schedules)
    from keras_prune.io import load_model

    custom = read_custom_objects(args.custom_objects) if getattr(args, "custom_objects", None) else None
    model = load_model(args.model, weights=args.weights, safe_mode=not args.unsafe, custom_objects=custom)
    if announce:
        print_conversion(model, file=sys.stderr)
    return model


def print_conversion(model, file=None) -> bool:
    """Prints what was translated when ``model`` came from a Keras 2 file: a header line, then
    one line per distinct change. Returns whether it printed anything."""
    from keras_prune.legacy import conversion_of

    conversion = conversion_of(model)
    if conversion is None:
        return False
    print(f"note: {conversion.header()}", file=file)
    for line in conversion.summary():
        print(f"  {line}", file=file)
    return True


def read_custom_objects(source: str) -> dict:
    """``{name: object}`` of the public classes and functions that ``source`` defines (a
    ``.py`` file, or an importable module name), for ``custom_objects=``.

    Example:
        >>> objects = read_custom_objects("keras_prune.legacy.activations")
        >>> sorted(objects)
        ['keras2_hard_sigmoid', 'serialized']
    """
    module = _import_module(source)
    return {
        name: value for name, value in vars(module).items()
        if not name.startswith("_") and callable(value) and getattr(value, "__module__", None) == module.__name__
    }


def _import_module(source: str):
    path = Path(source)
    if path.suffix != ".py":
        try:
            return importlib.import_module(source)
        except ImportError as error:
            raise CLIError(f"--custom-objects {source}: cannot import it ({error}); pass a .py file or a module name.") from None
    if not path.is_file():
        raise CLIError(f"--custom-objects file '{source}' does not exist. Check the path.")
    name = f"_keras_prune_custom_objects_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look their module up there
    sys.path.insert(0, str(path.resolve().parent))  # so it can import the modules next to it
    try:
        spec.loader.exec_module(module)
    except Exception as error:  # whatever the user's module raises
        raise CLIError(f"--custom-objects '{source}' failed to run: {type(error).__name__}: {error}") from None
    finally:
        with contextlib.suppress(ValueError):  # unless the module took it out itself
            sys.path.remove(str(path.resolve().parent))
    return module


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
