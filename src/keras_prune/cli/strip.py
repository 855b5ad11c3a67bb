"""``keras-prune strip``: remove the pruning state from a model saved during pruning."""

from __future__ import annotations

import argparse

from keras_prune.cli._common import (
    add_model_arguments,
    add_output_arguments,
    check_output,
    load,
    print_report,
    save,
)

DESCRIPTION = """\
A model saved while pruning (for example a checkpoint of `keras-prune finetune`) carries
masks and a step counter. `strip` returns the plain model with
the same architecture as before pruning and its pruned weights at exactly 0, ready to export.
A model without pruning state (the output of `prune`, `finetune` or `shrink`) is written as it is,
with a note. Either way OUT has no optimizer state unless --keep-optimizer."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "strip",
        help="remove the pruning state of a model saved mid-pruning, keeping the pruned weights at 0",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(parser)
    add_output_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from keras_prune import strip_pruning
    from keras_prune.analysis import summarize
    from keras_prune.callbacks import collect_pruning

    check_output(args)
    model = load(args)
    if collect_pruning(model):
        stripped = strip_pruning(model)
        if model.compiled:  # keep the loss, metrics and optimizer settings (finetune reads them)
            stripped.compile_from_config(model.get_compile_config())
        if args.keep_optimizer:
            print("note: the optimizer's state belongs to the model being pruned, so OUT starts with a "
                  "fresh optimizer; --keep-optimizer keeps state only when nothing is stripped.",
                  file=sys.stderr)
    else:
        print(f"note: '{args.model}' holds no pruning state; writing it as it is.", file=sys.stderr)
        stripped = model
    save(stripped, args)
    print_report(summarize(stripped), title=f"{args.output} (stripped from {args.model})")
    return 0
