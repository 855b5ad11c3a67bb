"""``keras-prune size``: what a model costs on disk in each format."""

from __future__ import annotations

import argparse

from keras_prune.cli._common import add_model_arguments

DESCRIPTION = """\
Write MODEL in every format into a temporary folder and print a table of their sizes: the
.keras file (no optimizer state), the same gzipped (level 9), the keras-prune sparse format
(.kpsparse) with float32 (lossless), float16 and int8 kernel values, and LiteRT (.tflite) with
the sparsity optimization. Two rows appear only when they apply: if the lossless .kpsparse
stores a clustered tensor as a codebook plus rANS-coded symbols, the same file without that
coding; and if Keras' model.quantize("int8") quantizes some layer (Dense, EinsumDense, ...),
the .kpsparse of such a quantized copy. A model saved mid-pruning is stripped first. If the LiteRT conversion fails
(or the backend is not TensorFlow), its row is left out and a note on stderr says why."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "size",
        help="table of the model's file size in every format",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(parser)
    parser.add_argument("--no-litert", action="store_true", help="skip the LiteRT conversion (the slowest part)")
    parser.add_argument("--json", action="store_true", help="print the sizes as JSON instead of a table")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import json

    from rich.console import Console
    from rich.table import Table

    from keras_prune.cli._common import load
    from keras_prune.export.sizes import FORMATS, file_sizes

    model = load(args)
    sizes = file_sizes(model, litert=False)
    if not args.no_litert:
        sizes.update(litert_size(model))
    if args.json:
        print(json.dumps(sizes, indent=2))
        return 0
    table = Table(title=f"File size of {args.model}")
    table.add_column("format")
    table.add_column("bytes", justify="right")
    table.add_column("x .keras", justify="right")
    for key, size in sizes.items():
        table.add_row(FORMATS[key], f"{size:,}", f"{size / sizes['keras']:.3f}")
    Console(width=100).print(table)
    return 0


def litert_size(model) -> dict[str, int]:
    """{"litert": bytes}, or {} with a one-line note on stderr when LiteRT cannot convert it."""
    import sys

    import keras

    if keras.backend.backend() != "tensorflow":
        print(f"note: no LiteRT row: LiteRT conversion needs the TensorFlow backend "
              f"(KERAS_BACKEND={keras.backend.backend()}).", file=sys.stderr)
        return {}
    from keras_prune.export.litert import convert_litert
    from keras_prune.io import error_summary

    try:
        return {"litert": len(convert_litert(model))}
    except ValueError as error:
        print(f"note: no LiteRT row: {error_summary(error)}", file=sys.stderr)
        return {}
