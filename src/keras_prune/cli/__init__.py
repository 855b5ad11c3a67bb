"""The ``keras-prune`` command: a thin layer over the API, one module per subcommand.

Each subcommand module has ``register(subparsers)``, which adds its parser and sets
``run=<function(args) -> int>``. Heavy imports (Keras, TensorFlow) happen inside ``run``
so that ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
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

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class CLIError(Exception):
    """A user-facing failure: printed as one line, exit code 1, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keras-prune",
        description="Prune trained Keras 3 models and measure what it buys: accuracy, bytes, ms.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"keras_prune.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: parses ``argv`` and runs the subcommand; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    try:
        return int(args.run(args) or EXIT_OK)
    except KeyboardInterrupt:
        print("keras-prune: interrupted", file=sys.stderr)
        return 130
    except (CLIError, ValueError, TypeError, OSError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"keras-prune {args.command}: error: {message}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
