"""``keras-prune shrink``: remove whole channels, filters and heads; optionally fine-tune."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from keras_prune.cli import CLIError
from keras_prune.cli._checkpoint import Checkpoint
from keras_prune.cli._common import (
    add_model_arguments,
    add_output_arguments,
    check_output,
    fraction,
    save,
)
from keras_prune.cli._training import (
    DATA_HELP,
    add_training_arguments,
    check_training_flags,
    compile_config,
    evaluate,
    fit_resumably,
    load_data,
    load_unpruned,
    note_fresh_optimizer,
)

DESCRIPTION = f"""\
Remove the least important R of the channels of every prunable group (Dense units, Conv
filters, attention heads; coupled layers such as residual Adds, Concatenate, BatchNorm and
depthwise convolutions are pruned together) and write the smaller dense model to OUT. The
output layer, --exclude'd layers and groups that reach a layer keras-prune cannot reason
about keep all their channels; the plan lists them. A MODEL saved mid-pruning (a
`finetune` or prune_low_magnitude checkpoint) is stripped first, with a note.

With --data and --epochs N the smaller model is fine-tuned for N epochs, as `finetune` does;
with validation data in DATA the validation metrics are reported before and after.
{DATA_HELP}

--fold-batchnorm merges each BatchNorm into the Dense or Conv layer that feeds it, once
fine-tuning is done: OUT computes the same outputs with fewer operations, which TensorFlow
turns into time on small models (LiteRT's converter folds BatchNorm by itself).

Reports parameters, FLOPs (per example) and median CPU latency at batch 1 and --batch-size,
before (MODEL as given) and after (OUT as written), measured side by side in TensorFlow; with --litert also in LiteRT's
interpreter (the runtime of phones and edge devices, where small models lose less to
per-operation overhead)."""

EXAMPLES = """\
examples:
  keras-prune shrink model.keras -o small.keras --ratio 0.5 --round-to 8
  keras-prune shrink model.keras -o small.keras --ratio 0.5 --data train.npz --epochs 3
  keras-prune shrink model.keras -o small.keras --ratio 0.5 --litert
  keras-prune shrink model.keras -o small.keras --ratio 0.5 --data train.npz --epochs 3 --fold-batchnorm"""

# The flags that define a run, besides the fine-tuning ones; a checkpoint resumes only its own.
RUN_KEYS = ("ratio", "round_to", "importance", "scope", "exclude")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "shrink",
        help="structured pruning: remove channels for a smaller, faster dense model",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(parser)
    add_output_arguments(parser)
    parser.add_argument("--ratio", required=True, metavar="R",
                        help="fraction of each group's channels to remove, in [0, 1)")
    parser.add_argument("--round-to", type=int, default=1, metavar="K",
                        help="keep channel counts at multiples of K (8 suits most CPUs)")
    parser.add_argument("--importance", choices=("l1", "l2", "bn_scale", "taylor", "wanda"),
                        default="l1", help="channel score (taylor needs --data and a loss; wanda needs --data)")
    parser.add_argument("--scope", choices=("layer", "global"), default="layer",
                        help="prune R of every group (layer) or rank all channels together")
    parser.add_argument("--exclude", default="", metavar="NAMES",
                        help="comma-separated layer names to leave untouched")
    add_training_arguments(parser, epochs=0, data_required=False)
    parser.add_argument("--fold-batchnorm", action="store_true",
                        help="fold BatchNorm into the layers feeding it in OUT, after any fine-tuning: "
                             "the same outputs with fewer operations, for inference and export")
    parser.add_argument("--litert", action="store_true",
                        help="also measure latency in LiteRT (needs the TensorFlow backend)")
    parser.add_argument("--report", metavar="FILE.json", help="also write the figures as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import keras

    from keras_prune.io import error_summary

    ratio = fraction("--ratio", args.ratio)
    if args.round_to < 1:
        raise CLIError(f"--round-to must be >= 1. Received: --round-to {args.round_to}")
    check_training_flags(args)
    if (args.epochs or args.importance in ("taylor", "wanda")) and not args.data:
        raise CLIError("--epochs and --importance taylor/wanda need --data DATA (an .npz, IDX or image folder).")
    if args.litert and keras.backend.backend() != "tensorflow":
        raise CLIError(f"--litert needs the TensorFlow backend. Received: KERAS_BACKEND={keras.backend.backend()}")
    check_output(args)
    if args.report:
        check_output(argparse.Namespace(**{**vars(args), "output": args.report}), suffixes=(".json",))
    checkpoint = Checkpoint(args, RUN_KEYS) if args.epochs else None
    model = load_unpruned(args)
    if args.litert and len(model.inputs) != 1:
        raise CLIError(f"--litert measures single-input models; '{args.model}' has {len(model.inputs)} "
                       "inputs. Drop --litert.")
    data = load_data(args, model) if args.data else None
    config = _config(keras, model, args, data)
    small, summary = shrink(model, ratio, args, data, config, checkpoint)
    if args.keep_optimizer:
        _note_optimizer(args)
    save(small, args)  # before measuring: the fine-tuned model is never lost to a failed measurement
    if checkpoint is not None:
        checkpoint.clear()
    try:
        figures = {"plan": summary, "rows": _measure({"before": model, "after": small}, config, data, args)}
    except (ValueError, TypeError) as error:
        raise CLIError(f"Wrote '{args.output}', but measuring it failed: {error_summary(error)}") from error
    if args.report:
        from keras_prune.io import atomic_write

        atomic_write(args.report, lambda tmp: Path(tmp).write_text(json.dumps(figures, indent=2)))
    _print(figures, args)
    return 0


def shrink(model, ratio: float, args, data, config, checkpoint: Checkpoint | None) -> tuple[object, list[str]]:
    """Plans, rebuilds, fine-tunes (resuming from ``checkpoint``) and folds; returns the new
    model and the plan's summary lines."""
    from keras_prune.structured import (
        apply_plan,
        fold_batchnorm,
        foldable_batchnorms,
        plan_channels,
    )

    calibration = None
    if args.importance == "taylor":
        model.compile_from_config(config)
    if args.importance in ("taylor", "wanda"):
        calibration = (data.x_train[:512], data.y_train[:512])
    exclude = [name.strip() for name in args.exclude.split(",") if name.strip()]
    plan = plan_channels(model, ratio, importance=args.importance, scope=args.scope,
                         round_to=args.round_to, exclude=exclude, calibration_data=calibration)
    if not plan.removable_groups() and not any(hub.removes_anything() for hub in plan.hub):
        raise CLIError(f"'{args.model}' has no channels shrink can remove ({_reasons(plan)}). It needs a "
                       "Dense, Conv or attention layer that is neither the output nor --exclude'd.")
    small, done = checkpoint.load(args.unsafe) if checkpoint else (None, 0)
    if small is None:
        small = apply_plan(plan)
        if checkpoint:
            small.compile_from_config(config)
    if checkpoint:  # a resumed model keeps the optimizer state its checkpoint holds
        fit_resumably(small, data, args, checkpoint, done)
    summary = plan.summary().splitlines()
    if plan.hub:
        summary.append("note: FLOPs count each KerasHub block as one operation per output value (its attention "
                       "and FFN arithmetic is not counted), and latency runs inputs of unknown length at length 1")
    if args.fold_batchnorm:
        folds = foldable_batchnorms(small)
        small = fold_batchnorm(small)
        summary.append(f"BatchNorm folded into {len(folds)} layers: {', '.join(folds.values()) or 'none'}")
    return small, summary


def _note_optimizer(args) -> None:
    """For --keep-optimizer: OUT holds the fine-tuning optimizer's state, unless nothing was
    fine-tuned or folding rebuilt the layers it trained (then a note says so)."""
    if not args.epochs:
        note_fresh_optimizer("nothing was fine-tuned (--epochs 0), and no optimizer state of MODEL fits "
                             "the removed channels")
    elif args.fold_batchnorm:
        note_fresh_optimizer("--fold-batchnorm rebuilt the layers the optimizer trained")


def _reasons(plan, limit: int = 3) -> str:
    lines = plan.summary().splitlines()
    if not lines:
        return "it has no Dense, Conv or attention layers"
    more = f"; and {len(lines) - limit} more" if len(lines) > limit else ""
    return "; ".join(lines[:limit]) + more


def _measure(models: dict, config, data, args) -> dict:
    """Per model: parameters, FLOPs, latency (measured interleaved) and validation metrics."""
    from keras_prune.analysis.flops import total_flops
    from keras_prune.analysis.latency import compare_latency

    runtimes = {"": "keras", "litert_": "litert"} if args.litert else {"": "keras"}
    latency = {
        f"{prefix}latency_ms_batch{b}": compare_latency(list(models.values()), b, repeats=20, runtime=runtime)
        for prefix, runtime in runtimes.items()
        for b in sorted({1, args.batch_size})
    }
    rows = {}
    for i, (name, m) in enumerate(models.items()):
        row = {"params": m.count_params(), "flops": total_flops(m)}
        row.update({key: ms[i] for key, ms in latency.items()})
        scores = evaluate(m, config, data, args.batch_size) if config else {}
        row.update({f"val_{key}": value for key, value in scores.items()})
        rows[name] = row
    return rows


def _config(keras, model, args, data) -> dict | None:
    """The compile settings for fine-tuning and validation; None when neither needs them.

    Fine-tuning and Taylor scores need a loss (an error names the flag); validation alone is
    skipped without one, with a note saying how to get it."""
    if args.epochs or args.importance == "taylor":
        return compile_config(keras, model, args)
    if data is None or data.validation is None:
        return None
    if not (args.loss or getattr(model, "loss", None)):
        print("note: MODEL has no loss; pass --loss (and --metrics accuracy) for validation "
              "figures.", file=sys.stderr)
        return None
    return compile_config(keras, model, args)


def _print(figures: dict, args) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=120)
    console.print("\n".join(figures["plan"]))
    table = Table(title=f"{args.output} (shrunk from {args.model})")
    before, after = figures["rows"]["before"], figures["rows"]["after"]
    for column in ("", "before", "after", "ratio"):
        table.add_column(column, justify="right")
    for key in before:
        ratio = before[key] / after[key] if after[key] else float("inf")
        fmt = "{:,.4f}" if key.startswith("val_") else "{:,.2f}" if "latency" in key else "{:,}"
        table.add_row(key, fmt.format(before[key]), fmt.format(after[key]),
                      "" if key.startswith("val_") else f"{ratio:.2f}x")
    console.print(table)
