"""The ``keras-prune`` command: a thin layer over the API, one module per subcommand.

Each subcommand module has ``register(subparsers)``, which adds its parser and sets
``run=<function(args) -> int>``. Heavy imports (Keras, TensorFlow) happen inside ``run``
so that ``--help`` is instant.

Every failure ends the same way: one or two lines on stderr (the message, and its innermost
cause when that adds something), exit code 1; usage errors exit 2; Ctrl-C exits 130. No
traceback is shown unless ``KERAS_PRUNE_DEBUG=1`` is set.

Commands are quiet: TensorFlow's C++ log lines (oneDNN, cpu_feature_guard, absl) are hidden,
and each Python or Keras warning is shown once, on one line, unless ``--verbose``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import re
import sys
import tempfile
import warnings

# Subcommand modules, in the order `keras-prune --help` lists them.
SUBCOMMANDS = [
    "demo",
    "convert",
    "export",
    "inspect_model",
    "prune_model",
    "size",
    "finetune",
    "cluster",
    "strip",
    "shrink",
    "analyze",
]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
DEBUG_VARIABLE = "KERAS_PRUNE_DEBUG"
MAX_LINE = 500  # characters of one error line; Keras and TensorFlow messages can be pages long

EPILOG = f"""\
exit codes: 0 success, 1 failure (one or two lines on stderr), 2 usage error, 130 interrupted.
Set {DEBUG_VARIABLE}=1 to see the full Python traceback of a failure."""
VERBOSE_HELP = "show TensorFlow's log lines and every warning in full (hidden or shortened by default)"


class CLIError(Exception):
    """A user-facing failure: printed as one line, exit code 1, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keras-prune",
        description="Prune trained Keras 3 models and measure what it buys: accuracy, bytes, ms.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"keras_prune.cli.{name}").register(subparsers)
    for subparser in subparsers.choices.values():  # also after the command: keras-prune inspect M --verbose
        with contextlib.suppress(argparse.ArgumentError):
            subparser.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
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
        with quiet(not (args.verbose or _debugging())):
            _load_api()
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


# -- quiet output: TensorFlow's C++ logs hidden, warnings once and short ---------------------------

# A line of TensorFlow's C++ (absl) log: "I0000 00:00:1712345678.123456   12345 port.cc:153] ..."
# (the time is hh:mm:ss.us, or the seconds since 1970 before absl is set up),
# and absl's notice that such lines go to stderr before its logging is set up.
_CPP_LOG = re.compile(r"^[IWEF]\d{4} [\d:.]+\s+\d+ [^ ]+:\d+\] |^WARNING: All log messages before absl::")
# Warnings about how Keras or TensorFlow work inside, not about the user's model or data.
_NOISE = re.compile(
    r"Skipping variable loading for optimizer|compiled metrics have yet to be built|"
    r"triggered tf\.function retracing|saving your model as an HDF5 file|"
    r"Do not pass an `input_shape`/`input_dim` argument to a layer|"
    r"`compile\(\)` was not called as part of model loading because the model's `compile\(\)` method is custom"
)
_LOGGERS = ("tensorflow", "absl", "keras", "jax._src.xla_bridge")


@contextlib.contextmanager
def quiet(enabled: bool = True):
    r"""Within the block: TensorFlow's C++ logs are hidden (``TF_CPP_MIN_LOG_LEVEL=3`` unless
    set, and the lines it prints while being imported are dropped), and each warning (Python
    ``warnings``, and the ``tensorflow``/``absl``/``keras`` loggers) is printed once, as one
    ``warning: ...`` line, except the ones about Keras internals. Restored on exit.

    Example:
        >>> import contextlib, sys, warnings
        >>> with contextlib.redirect_stderr(sys.stdout), quiet():
        ...     warnings.warn("The first line says it all.\nDetails.")
        ...     warnings.warn("The first line says it all.\nDetails.")
        warning: The first line says it all.
    """
    if not enabled:
        yield
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    _import_silently("keras")  # imports TensorFlow on its backend
    seen: set[str] = set()
    handler = _BriefHandler(seen)
    saved = [(logger, logger.handlers[:], logger.propagate) for logger in map(logging.getLogger, _LOGGERS)]
    for logger, _, _ in saved:
        logger.handlers, logger.propagate = [handler], False
    showwarning, warnings.showwarning = warnings.showwarning, lambda message, *_, **__: _brief(str(message), seen)
    try:
        yield
    finally:
        warnings.showwarning = showwarning
        for logger, handlers, propagate in saved:
            logger.handlers, logger.propagate = handlers, propagate


class _BriefHandler(logging.Handler):
    def __init__(self, seen: set[str]):
        super().__init__(logging.WARNING)
        self.seen = seen

    def emit(self, record: logging.LogRecord) -> None:
        _brief(record.getMessage(), self.seen)


def _brief(message: str, seen: set[str]) -> None:
    """Prints ``warning: <first line of message>`` unless seen before or noise."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if not lines or lines[0] in seen or _NOISE.search(message):
        return
    seen.add(lines[0])
    print(_shorten(f"warning: {lines[0]}", limit=300), file=sys.stderr)


def _import_silently(module: str) -> None:
    """Imports ``module`` with file descriptor 2 caught, then prints back what was not a C++ log
    line. TensorFlow's native libraries write to the descriptor directly while being loaded,
    before TF_CPP_MIN_LOG_LEVEL applies."""
    if module in sys.modules:
        return
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr descriptor: nothing to hide
        importlib.import_module(module)
        return
    with tempfile.TemporaryFile(mode="w+b") as caught:
        os.dup2(caught.fileno(), 2)
        try:
            importlib.import_module(module)
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            text = caught.read().decode("utf-8", "replace")
            kept = [line for line in text.splitlines() if line.strip() and not _CPP_LOG.match(line)]
            if kept:
                print("\n".join(kept), file=sys.stderr)


def _load_api() -> None:
    """Imports keras-prune's API, which registers its classes with Keras. ``keras_prune`` skips
    that while the ``keras-prune`` command starts, so that ``--help`` needs no Keras and the
    command can hide TensorFlow's start-up logs first."""
    import keras_prune

    keras_prune.PruneLowMagnitude  # noqa: B018  (the first public name loads them all)


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
