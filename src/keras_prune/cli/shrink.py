"""``keras-prune shrink``: remove whole channels, filters and heads; optionally fine-tune."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from keras_prune.cli import CLIError
from keras_prune.cli._common import (
    add_model_arguments,
    add_output_arguments,
    check_output,
    fraction,
    load,
    save,
)

DESCRIPTION = """\
Remove the least important R of the channels of every prunable group (Dense units, Conv
filters, attention heads; coupled layers such as residual Adds, Concatenate, BatchNorm and
depthwise convolutions are pruned together) and write the smaller dense model to OUT. The
output layer, --exclude'd layers and groups that reach a layer keras-prune cannot reason
about keep all their channels; the plan lists them.

With --data and --epochs N the smaller model is fine-tuned for N epochs with Adam. DATA is
an .npz file with x_train and y_train (optionally x_test and y_test, then accuracy before and
after is reported) or an MNIST-style folder of IDX files.

Reports parameters, FLOPs (per example) and median CPU latency at batch 1 and --batch-size,
before and after, measured side by side in TensorFlow; with --litert also in LiteRT's
interpreter (the runtime of phones and edge devices, where small models lose less to
per-operation overhead)."""

EXAMPLES = """\
examples:
  keras-prune shrink model.keras -o small.keras --ratio 0.5 --round-to 8
  keras-prune shrink model.keras -o small.keras --ratio 0.5 --data train.npz --epochs 3
  keras-prune shrink model.keras -o small.keras --ratio 0.5 --litert"""


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
    parser.add_argument("--importance", choices=("l1", "l2", "bn_scale", "taylor"),
                        default="l1", help="channel score (taylor needs --data and a loss)")
    parser.add_argument("--scope", choices=("layer", "global"), default="layer",
                        help="prune R of every group (layer) or rank all channels together")
    parser.add_argument("--exclude", default="", metavar="NAMES",
                        help="comma-separated layer names to leave untouched")
    parser.add_argument("--data", metavar="DATA", help=".npz file or IDX folder (see above)")
    parser.add_argument("--epochs", type=int, default=0, metavar="N", help="fine-tuning epochs")
    parser.add_argument("--learning-rate", type=float, default=1e-3, metavar="LR")
    parser.add_argument("--loss", metavar="NAME",
                        help="Keras loss for fine-tuning when MODEL is not compiled "
                             "(e.g. sparse_categorical_crossentropy)")
    parser.add_argument("--from-logits", action="store_true",
                        help="with --loss: the model outputs logits")
    parser.add_argument("--batch-size", type=int, default=32, metavar="B",
                        help="batch size for fine-tuning and the second latency figure")
    parser.add_argument("--litert", action="store_true",
                        help="also measure latency in LiteRT (needs the TensorFlow backend)")
    parser.add_argument("--report", metavar="FILE.json", help="also write the figures as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    ratio = fraction("--ratio", args.ratio)
    for flag, value, low in (("--round-to", args.round_to, 1), ("--epochs", args.epochs, 0),
                             ("--batch-size", args.batch_size, 1)):
        if value < low:
            raise CLIError(f"{flag} must be >= {low}. Received: {flag} {value}")
    if (args.epochs or args.importance == "taylor") and not args.data:
        raise CLIError("--epochs and --importance taylor need --data DATA (an .npz or IDX folder).")
    if args.data and not Path(args.data).exists():
        raise CLIError(f"--data '{args.data}' does not exist. Check the path.")
    if args.litert:
        import keras

        if keras.backend.backend() != "tensorflow":
            raise CLIError(f"--litert needs the TensorFlow backend. Received: KERAS_BACKEND={keras.backend.backend()}")
    check_output(args)
    if args.report:
        check_output(argparse.Namespace(**{**vars(args), "output": args.report}), suffixes=(".json",))
    model = load(args)
    data = _load_data(args.data, model) if args.data else None
    loss = _loss(args, model) if args.epochs or args.importance == "taylor" else None
    figures = shrink(model, ratio, args, data, loss)
    save(figures.pop("model"), args)
    if args.report:
        from keras_prune.io import atomic_write

        atomic_write(args.report, lambda tmp: Path(tmp).write_text(json.dumps(figures, indent=2)))
    _print(figures, args)
    return 0


def shrink(model, ratio: float, args, data, loss) -> dict:
    """Plans, rebuilds, fine-tunes and measures; returns the figures and the new model."""
    import keras

    from keras_prune.analysis.flops import total_flops
    from keras_prune.analysis.latency import compare_latency
    from keras_prune.structured import apply_plan, plan_channels

    calibration = None
    if args.importance == "taylor":
        model.compile(loss=loss)
        calibration = (data["x_train"][:512], data["y_train"][:512])
    exclude = [name.strip() for name in args.exclude.split(",") if name.strip()]
    plan = plan_channels(model, ratio, importance=args.importance, scope=args.scope,
                         round_to=args.round_to, exclude=exclude, calibration_data=calibration)
    small = apply_plan(plan)
    if args.epochs:
        small.compile(optimizer=keras.optimizers.Adam(args.learning_rate), loss=loss)
        small.fit(data["x_train"], data["y_train"], batch_size=args.batch_size,
                  epochs=args.epochs, verbose=2)
    figures = {"plan": plan.summary().splitlines(), "model": small, "rows": {}}
    runtimes = {"": "keras", "litert_": "litert"} if args.litert else {"": "keras"}
    latency = {
        f"{prefix}latency_ms_batch{b}": compare_latency([model, small], b, repeats=20, runtime=runtime)
        for prefix, runtime in runtimes.items()
        for b in sorted({1, args.batch_size})
    }
    for i, (name, m) in enumerate((("before", model), ("after", small))):
        row = {"params": m.count_params(), "flops": total_flops(m)}
        row.update({key: ms[i] for key, ms in latency.items()})
        if data is not None and "x_test" in data:
            row["accuracy"] = _accuracy(m, data)
        figures["rows"][name] = row
    return figures


def _load_data(path: str, model) -> dict:
    import numpy as np

    from keras_prune.datasets import load_idx_dataset

    if Path(path).is_dir():
        arrays = load_idx_dataset(path)
    else:
        with np.load(path) as npz:
            arrays = {k: npz[k] for k in npz.files}
        if "x_train" not in arrays and "x" in arrays:
            arrays["x_train"], arrays["y_train"] = arrays.pop("x"), arrays.pop("y")
    if "x_train" not in arrays or "y_train" not in arrays:
        raise CLIError(f"--data '{path}' must hold arrays x_train and y_train (or x and y).")
    shape = tuple(model.inputs[0].shape[1:])
    for key in ("x_train", "x_test"):
        if key in arrays and arrays[key].shape[1:] != shape:
            if int(np.prod(arrays[key].shape[1:])) != int(np.prod(shape)):
                raise CLIError(f"--data {key} has shape {arrays[key].shape[1:]}; the model wants {shape}.")
            arrays[key] = arrays[key].reshape((-1,) + shape)
    return arrays


def _loss(args, model):
    import keras

    if args.loss:
        # The class form (SparseCategoricalCrossentropy, ...) takes from_logits and serializes.
        name = "".join(part.capitalize() for part in args.loss.split("_"))
        cls = getattr(keras.losses, name, None)
        if not (isinstance(cls, type) and issubclass(cls, keras.losses.Loss)):
            raise CLIError(f"--loss {args.loss} is not a Keras loss; try sparse_categorical_crossentropy.")
        if not args.from_logits:
            return cls()
        try:
            return cls(from_logits=True)
        except TypeError:
            raise CLIError(f"--loss {args.loss} has no logits form; drop --from-logits.") from None
    if getattr(model, "loss", None) is not None:
        return model.loss
    raise CLIError("MODEL is not compiled; pass --loss NAME (and --from-logits if it outputs logits).")


def _accuracy(model, data) -> float:
    import numpy as np

    out = model.predict(data["x_test"], batch_size=256, verbose=0)
    return float((np.argmax(out, axis=-1) == np.asarray(data["y_test"]).reshape(-1)).mean())


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
        fmt = "{:,.4f}" if key == "accuracy" else "{:,.2f}" if "latency" in key else "{:,}"
        table.add_row(key, fmt.format(before[key]), fmt.format(after[key]),
                      "" if key == "accuracy" else f"{ratio:.2f}x")
    console.print(table)
