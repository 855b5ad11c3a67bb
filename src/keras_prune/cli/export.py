"""``keras-prune export``: write a model as a compact sparse file or a LiteRT flatbuffer."""

from __future__ import annotations

import argparse

from keras_prune.cli import CLIError
from keras_prune.cli._common import add_model_arguments, check_output, load

SUFFIXES = {"sparse": ".kpsparse", "litert": ".tflite"}
DESCRIPTION = """\
Write MODEL (pruning wrappers are stripped first) in a format where pruned weights cost
almost nothing on disk, then load the result back and report the largest difference between
its outputs and Keras's on random sample inputs.

  sparse  the keras-prune .kpsparse file: architecture + per-tensor sparse encodings,
          compressed; `--values float32` is lossless. Every keras-prune command reads it.
  litert  a LiteRT (.tflite) flatbuffer converted with the sparsity optimization.

The format defaults to the one OUT's extension names (.kpsparse or .tflite)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="write a compact sparse (.kpsparse) or LiteRT (.tflite) file",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(parser)
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="the file to write (.kpsparse or .tflite)")
    parser.add_argument("--format", choices=sorted(SUFFIXES), help="output format (default: from OUT's extension)")
    parser.add_argument(
        "--values", choices=["float32", "float16", "int8"], default="float32",
        help="sparse format only: how kernel values are stored; float32 is lossless, float16 "
        "and int8 (one scale per output channel) are smaller (default: float32)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.set_defaults(run=run)


def output_format(args: argparse.Namespace) -> str:
    if args.format:
        return args.format
    for name, suffix in SUFFIXES.items():
        if args.output.lower().endswith(suffix):
            return name
    raise CLIError(f"Cannot tell the format from '{args.output}'; pass --format sparse or --format litert.")


def run(args: argparse.Namespace) -> int:
    import os

    import numpy as np

    name = output_format(args)
    if name == "litert" and args.values != "float32":
        raise CLIError("--values applies to --format sparse only; LiteRT stores float32 weights.")
    check_output(args, suffixes=(SUFFIXES[name],))
    model = load(args)
    inputs = sample_inputs(model)
    if name == "sparse":
        from keras_prune import export_sparse, load_sparse

        export_sparse(model, args.output, values=args.values, overwrite=args.overwrite)
        loaded = load_sparse(args.output, safe_mode=not args.unsafe)
        expected = np.asarray(model(inputs, training=False))
        diff = float(np.max(np.abs(np.asarray(loaded(inputs, training=False)) - expected)))
    else:
        from pathlib import Path

        from keras_prune.export.litert import export_litert, litert_max_abs_diff

        export_litert(model, args.output, overwrite=args.overwrite)
        diff = litert_max_abs_diff(model, Path(args.output).read_bytes(), inputs)
    before, after = os.path.getsize(args.model), os.path.getsize(args.output)
    print(
        f"{args.output}: {after:,} bytes ({after / before:.3f}x of {args.model}, {before:,} bytes); "
        f"max |output difference| on {len(inputs)} random inputs: {diff:.3g}"
    )
    return 0


def sample_inputs(model, batch: int = 8, seed: int = 0):
    """Uniform [0, 1) inputs of the model's (single) input shape, for output comparisons."""
    import numpy as np

    if len(model.inputs) != 1:
        raise CLIError(f"export compares outputs of single-input models; this one has {len(model.inputs)} inputs.")
    shape = tuple(model.inputs[0].shape)[1:]
    if any(d is None for d in shape):
        raise CLIError(f"export needs a fixed input shape to make sample inputs; the model's is {shape}.")
    return np.random.default_rng(seed).random((batch, *shape)).astype("float32")
