"""``keras-prune inspect``: the per-layer table of a model file (parameters, zeros, bytes)."""

from __future__ import annotations

import argparse

from keras_prune.cli._common import add_model_arguments, load, print_report

DESCRIPTION = """\
Print one row per layer that holds weights: type, parameters, prunable parameters, nonzeros,
sparsity of the prunable weights, the sparsity pattern (dense, unstructured, M:N = M zeros in
every N consecutive input weights, block RxC) and the bytes stored densely and with an
estimated sparse encoding (a bitmask plus the nonzero values), then the totals.
Layer paths shown here are the ones --layers/--exclude of `keras-prune prune` and `finetune` match.
A model saved by Keras 2 (tf.keras .h5, .json + weights, SavedModel folder) is read as Keras 3;
what was translated is listed on stderr (and under settings with --json)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="per-layer parameters, sparsity, pattern and bytes of a model",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from keras_prune.analysis import summarize
    from keras_prune.legacy import conversion_of

    model = load(args)
    settings = {"model": args.model}
    conversion = conversion_of(model)
    if conversion is not None:  # the translations, also in --json
        settings["converted_from"] = f"Keras {conversion.keras_version} ({conversion.format})"
        settings["translations"] = [str(note) for note in conversion.translations]
    report = summarize(model, settings=settings)
    if args.json:
        print(report.to_json())
    else:
        print_report(report, title=args.model)
    return 0
