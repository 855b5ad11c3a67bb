"""``keras-prune analyze``: how much each layer's pruning costs, one layer at a time."""

from __future__ import annotations

import argparse
from pathlib import Path

from keras_prune.cli import CLIError
from keras_prune.cli._common import add_model_arguments
from keras_prune.cli._evaluation import (
    DATA_HELP,
    add_evaluation_arguments,
    check_evaluation_flags,
    evaluation_data,
    print_table,
)

DEFAULT_SPARSITIES = "0.25,0.5,0.7,0.8,0.9,0.95"

DESCRIPTION = f"""\
Sensitivity analysis: prune each prunable layer alone (every other layer dense) to each of
--sparsities, one-shot by --method, and measure the metric on DATA. Prints a table (layers
ranked by their score, the area under their drop curve: higher is more sensitive) and writes
OUT.json (the measurements, which `keras-prune prune --allocation sensitivity
--sensitivity OUT.json` uses) and OUT.png (a curve per layer, or a heat map for many layers).
The model file is not changed.

{DATA_HELP}"""

EXAMPLES = """\
examples:
  keras-prune analyze model.keras --data mnist.npz -o lenet.sensitivity
  keras-prune analyze model.keras --data mnist.npz --method sparsegpt --sparsities 0.5,0.8,0.9"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "analyze",
        help="sensitivity analysis: the metric with each layer pruned alone, over a sparsity sweep",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(parser)
    parser.add_argument("-o", "--output", metavar="OUT",
                        help="write OUT.json and OUT.png (default: MODEL's name + .sensitivity, here)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT.json and OUT.png if they exist")
    add_evaluation_arguments(parser)
    parser.add_argument("--sparsities", default=DEFAULT_SPARSITIES, metavar="S,S,...",
                        help=f"sparsities to try per layer (default: {DEFAULT_SPARSITIES})")
    parser.add_argument("--method", choices=("magnitude", "wanda", "sparsegpt"), default="magnitude",
                        help="how each layer is pruned (default: magnitude)")
    parser.add_argument("--samples", type=int, default=128, metavar="N",
                        help="calibration examples for wanda and sparsegpt (default: 128)")
    parser.add_argument("--layers", metavar="REGEX", help="analyze only layers whose path matches REGEX")
    parser.add_argument("--image-scale", type=float, default=1 / 255, metavar="X",
                        help="multiply image pixels (0-255) by X (default: 1/255)")
    parser.add_argument("--quiet", action="store_true", help="hide the progress display")
    parser.set_defaults(run=run)


def parse_sparsities(text: str) -> list[float]:
    """``"0.5,0.9"`` -> ``[0.5, 0.9]``: fractions in (0, 1), sorted and distinct."""
    try:
        values = sorted({float(part) for part in text.split(",") if part.strip()})
    except ValueError:
        values = []
    if not values or not all(0.0 < v < 1.0 for v in values):
        raise CLIError(f"--sparsities must be comma-separated fractions in (0, 1), such as 0.5,0.8,0.9. "
                       f"Received: --sparsities {text}")
    return values


def output_paths(args: argparse.Namespace) -> tuple[Path, Path]:
    """OUT.json and OUT.png, checked before any work (never the model, no overwrite unless asked)."""
    from keras_prune.io import check_output_path

    stem = args.output or f"{Path(args.model).stem}.sensitivity"
    stem = stem[:-5] if stem.lower().endswith(".json") else stem
    paths = Path(f"{stem}.json"), Path(f"{stem}.png")
    for path in paths:
        check_output_path(path, overwrite=args.overwrite, inputs=[args.model], suffixes=(path.suffix,))
    return paths


def run(args: argparse.Namespace) -> int:
    from keras_prune.cli._common import load
    from keras_prune.sensitivity import sensitivity

    sparsities = parse_sparsities(args.sparsities)
    check_evaluation_flags(args)
    if args.samples < 1:
        raise CLIError(f"--samples must be >= 1, such as 128. Received: --samples {args.samples}")
    json_path, png_path = output_paths(args)
    model = load(args)
    evaluation, calibration = evaluation_data(args, model, args.image_scale)
    result = sensitivity(
        model, evaluation, sparsities=sparsities, method=args.method, metric=args.metric, layers=args.layers,
        samples=args.eval_samples, calibration_data=None if args.method == "magnitude" else calibration, calibration_samples=args.samples,
        progress=not args.quiet,
    )
    result.to_json(json_path)
    result.plot(png_path)
    print_table(result.table())
    print(f"wrote {json_path} and {png_path}")
    return 0
