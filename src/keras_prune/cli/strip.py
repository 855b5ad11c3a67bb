"""``keras-prune strip``: remove the pruning wrappers from a model saved during pruning."""

from __future__ import annotations

import argparse

from keras_prune.cli import CLIError
from keras_prune.cli._common import add_model_arguments, add_output_arguments, check_output, load, print_report, save

DESCRIPTION = """\
A model saved while pruning (with PruneLowMagnitude wrappers, for example a checkpoint of
`keras-prune finetune`) carries masks and step counters. `strip` returns the plain model with
the same architecture as before pruning and its pruned weights at exactly 0, ready to export."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "strip",
        help="remove pruning wrappers, keeping the pruned weights at 0",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(parser)
    add_output_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from keras_prune import strip_pruning
    from keras_prune.analysis import summarize
    from keras_prune.callbacks import collect_wrappers

    check_output(args)
    model = load(args)
    if not collect_wrappers(model):
        raise CLIError(
            f"'{args.model}' has no pruning wrappers, so there is nothing to strip; it is "
            "ready to use as it is."
        )
    stripped = strip_pruning(model)
    save(stripped, args)
    print_report(summarize(stripped), title=f"{args.output} (stripped from {args.model})")
    return 0
