"""``keras-prune finetune``: gradual pruning while fine-tuning on the user's data, resumable."""

from __future__ import annotations

import argparse
import math

from keras_prune.cli import CLIError
from keras_prune.cli._checkpoint import Checkpoint
from keras_prune.cli._common import (
    add_model_arguments,
    add_output_arguments,
    check_output,
    fraction,
    print_report,
    save,
)
from keras_prune.cli._training import (
    DATA_HELP,
    add_training_arguments,
    check_training_flags,
    compile_config,
    evaluate,
    fit_resumably,
    keep_optimizer_state,
    load_data,
    load_unpruned,
)
from keras_prune.cli.prune_model import layer_filter, parse_pattern

DESCRIPTION = f"""\
Prune MODEL gradually to --sparsity while fine-tuning it on DATA, keeping pruned weights at
exactly 0, then strip the pruning state and write OUT. Layers are found at any depth
(inside nested models, custom layers and KerasHub transformer blocks).

--schedule polynomial (default) raises the sparsity from 0 on tfmot's cubic curve over the
first two thirds of the epochs, so the last epochs recover at the final sparsity; constant
prunes to --sparsity at once and refreshes the masks every --frequency steps.

{DATA_HELP}"""

# The flags that define a run, besides the fine-tuning ones; a checkpoint resumes only its own.
RUN_KEYS = ("sparsity", "schedule", "frequency", "scope", "pattern", "layers", "exclude")

EXAMPLES = """\
examples:
  keras-prune finetune model.keras --data train.npz -o pruned.keras --sparsity 0.9 --epochs 4
  keras-prune finetune model.keras --data images/ -o pruned.keras --sparsity 0.8 --pattern block:1x4"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "finetune",
        help="gradual pruning with fine-tuning on your data (resumable after Ctrl-C)",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(parser)
    add_output_arguments(parser)
    parser.add_argument("--sparsity", metavar="S", help="final fraction of weights to prune, in [0, 1)")
    parser.add_argument("--schedule", choices=("polynomial", "constant"), default="polynomial",
                        help="how sparsity rises (default: polynomial)")
    parser.add_argument("--frequency", type=int, metavar="STEPS",
                        help="update the masks every STEPS training steps (default: about 10 updates per ramp, at most every 100 steps)")
    parser.add_argument("--scope", choices=("layer", "global"), default="layer",
                        help="rank weights per tensor (default) or across all pruned layers")
    parser.add_argument("--pattern", default="unstructured", metavar="unstructured|M:N|block:RxC",
                        help="sparsity pattern, as in `keras-prune prune` (M:N prunes M of every N)")
    parser.add_argument("--layers", "--include", dest="layers", metavar="REGEX",
                        help="prune only layers whose path matches REGEX (paths as `keras-prune inspect` lists them)")
    parser.add_argument("--exclude", metavar="REGEX", help="leave out layers whose path matches REGEX")
    add_training_arguments(parser, epochs=4, data_required=True)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import keras

    import keras_prune as kp
    from keras_prune.oneshot import ensure_prunable

    pattern = parse_pattern(args.pattern)
    sparsity = fraction("--sparsity", args.sparsity)
    if sparsity is None and "sparsity_m_by_n" not in pattern:
        raise CLIError("Give the final sparsity with --sparsity S, such as --sparsity 0.8.")
    if args.epochs < 1:
        raise CLIError(f"--epochs must be >= 1. Received: --epochs {args.epochs}")
    check_training_flags(args)
    check_output(args)
    checkpoint = Checkpoint(args, RUN_KEYS)

    model = load_unpruned(args)
    ensure_prunable(model)  # an error before any data is loaded; layer_filter checks the selection
    wanted = layer_filter(model, args.layers, args.exclude)
    data = load_data(args, model)
    config = compile_config(keras, model, args)
    steps_per_epoch = math.ceil(len(data.x_train) / args.batch_size)
    schedule = make_schedule(kp, args.schedule, sparsity or 0.0, args.epochs, steps_per_epoch, args.frequency)
    dense_scores = evaluate(model, config, data, args.batch_size)

    wrapped, done = checkpoint.load(args.unsafe)
    if wrapped is None:
        wrapped = kp.prune_low_magnitude(model, schedule, layers=wanted, scope=args.scope, **pattern)
        wrapped.compile_from_config(config)
    fit_resumably(wrapped, data, args, checkpoint, done, callbacks=[kp.UpdatePruningStep()])
    trained = wrapped.optimizer, wrapped.trainable_variables  # before stripping replaces them
    stripped = kp.strip_pruning(wrapped)
    stripped.compile_from_config(config)
    pruned_scores = evaluate(stripped, config, data, args.batch_size)
    if args.keep_optimizer:
        keep_optimizer_state(*trained, stripped)
    save(stripped, args)
    checkpoint.clear()
    report = kp.summarize(stripped)
    print_report(report, title=f"{args.output} (fine-tuned from {args.model})")
    for name, before in dense_scores.items():
        print(f"validation {name}: dense {before:.4f} -> pruned {pruned_scores[name]:.4f}")
    return 0


def make_schedule(kp, kind: str, sparsity: float, epochs: int, steps_per_epoch: int, frequency: int | None):
    """A PolynomialDecay over the first 2/3 of training, or a ConstantSparsity."""
    ramp = steps_per_epoch * max(1, math.ceil(2 * epochs / 3)) if epochs > 1 else steps_per_epoch - 1
    if frequency is not None and frequency < 1:
        raise CLIError(f"--frequency must be >= 1. Received: --frequency {frequency}")
    frequency = frequency or max(1, min(100, ramp // 10))
    if kind == "constant" or ramp < frequency:
        return kp.ConstantSparsity(sparsity, begin_step=0, frequency=frequency)
    end_step = frequency * (ramp // frequency)  # on an update step, so the target is reached
    return kp.PolynomialDecay(0.0, sparsity, begin_step=0, end_step=end_step, frequency=frequency)
