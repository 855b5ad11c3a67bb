"""The ``keras-prune`` command: a thin layer over the API, one module per subcommand.

Each subcommand module has ``register(subparsers)``, which adds its parser and sets
``run=<function(args) -> int>``. Heavy imports (Keras, TensorFlow) happen inside ``run``
so that ``--help`` is instant.

Every failure ends the same way: one or two lines on stderr (the message, and its innermost
cause when that adds something), exit code 1; usage errors exit 2; Ctrl-C exits 130. No
traceback is shown unless ``KERAS_PRUNE_DEBUG=1`` is set.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Subcommand modules, in the order `keras-prune --help` lists them.
SUBCOMMANDS = [
    "demo",
    "export",
    "inspect_model",
    "prune_model",
    "size",
    "finetune",
    "strip",
    "shrink",
]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
DEBUG_VARIABLE = "KERAS_PRUNE_DEBUG"
MAX_LINE = 500  # characters of one error line; Keras and TensorFlow messages can be pages long

EPILOG = f"""\
exit codes: 0 success, 1 failure (one or two lines on stderr), 2 usage error, 130 interrupted.
Set {DEBUG_VARIABLE}=1 to see the full Python traceback of a failure."""


class CLIError(Exception):
    """A user-facing failure: printed as one line, exit code 1, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keras-prune",
        description="Prune trained Keras 3 models and measure what it buys: accuracy, bytes, ms.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"keras_prune.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: parses ``argv`` and runs the subcommand; returns the exit code.

    Returns 0 on success, 1 when the command fails (the reason is printed on stderr in one or
    two lines, without a traceback), 2 for usage errors (unknown or missing arguments, as
    argparse reports them) and 130 when interrupted with Ctrl-C.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return _exit_code(exit_.code)
    try:
        return int(args.run(args) or EXIT_OK)
    except KeyboardInterrupt:
        if _debugging():
            raise
        print(f"keras-prune {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # every failure of every subcommand: TensorFlow, h5py, converters...
        if _debugging():
            raise
        for line in error_lines(error, prefix=f"keras-prune {args.command}: error: "):
            print(line, file=sys.stderr)
        return EXIT_FAILURE


def _exit_code(code: object) -> int:
    """argparse exits with 0 (``--help``) or 2 (usage errors); anything else is a usage error too."""
    if code is None:
        return EXIT_OK
    return code if isinstance(code, int) else EXIT_USAGE


def _debugging() -> bool:
    return os.environ.get(DEBUG_VARIABLE, "").strip().lower() not in ("", "0", "false", "no")


def error_lines(error: BaseException, prefix: str = "") -> list[str]:
    """The message of ``error`` in one line, plus a line for its innermost cause if that adds
    something (Keras often wraps the real reason, such as a missing custom class, in a generic
    error). Lines are cut to :data:`MAX_LINE` characters.

    Example:
        >>> try:
        ...     try:
        ...         int("x")
        ...     except ValueError as inner:
        ...         raise RuntimeError("Cannot read the settings.") from inner
        ... except RuntimeError as outer:
        ...     error_lines(outer)
        ['RuntimeError: Cannot read the settings.', "  caused by ValueError: invalid literal for int() with base 10: 'x'"]
    """
    from keras_prune.io import error_summary, innermost_error

    ours = isinstance(error, CLIError) or _raised_by_keras_prune(error)  # ours give the reason and fix
    named = "" if ours else f"{type(error).__name__}: "  # "InvalidArgumentError: ..." says who failed
    first = _shorten(prefix + named + error_summary(error, limit=10 * MAX_LINE))
    root = innermost_error(error)
    if root is error or ours:
        return [first]
    cause = error_summary(root, limit=10 * MAX_LINE)
    if cause == type(root).__name__ or _normalize(cause)[:80] in _normalize(first):
        return [first]
    return [first, _shorten(f"  caused by {type(root).__name__}: {cause}")]


def _raised_by_keras_prune(error: BaseException) -> bool:
    """Whether ``error`` was raised in keras-prune's own code (not in Keras, TensorFlow, ...)."""
    tb = error.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(package + os.sep)


def _normalize(text: str) -> str:
    return " ".join(text.split()).rstrip(".")


def _shorten(text: str, limit: int = MAX_LINE) -> str:
    """Cuts the middle of a long line: its start says what failed, its end often the fix."""
    if len(text) <= limit:
        return text
    tail = limit // 3
    return f"{text[: limit - tail - 5].rstrip()} ... {text[-tail:].lstrip()}"


if __name__ == "__main__":
    sys.exit(main())
