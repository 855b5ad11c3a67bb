"""``keras-prune export``: write a model as a compact sparse file or a LiteRT flatbuffer."""

from __future__ import annotations

import argparse

from keras_prune.cli import CLIError
from keras_prune.cli._common import add_model_arguments, check_output, load

SUFFIXES = {"sparse": ".kpsparse", "litert": ".tflite"}
SAMPLES = 8  # random inputs the exported file's outputs are compared on
DESCRIPTION = """\
Write MODEL (a model saved mid-pruning is stripped first) in a format where pruned weights cost
almost nothing on disk, then load the result back and report the largest difference between
its outputs and Keras's on random sample inputs.

  sparse  the keras-prune .kpsparse file: architecture + per-tensor sparse encodings,
          compressed; `--values float32` is lossless. Every keras-prune command reads it.
          A tensor with at most 256 distinct nonzero values (a clustered kernel, or the int8
          kernel of a model quantized with Keras' model.quantize("int8")) is stored as a
          codebook plus entropy-coded (rANS) symbols, automatically; the encodings used are
          printed.
  litert  a LiteRT (.tflite) flatbuffer converted with the sparsity optimization; a
          mixed-precision model is converted as float32 (LiteRT's kernels run float32).

The format defaults to the one OUT's extension names (.kpsparse or .tflite). OUT appears only
once the file is written and checked; if anything fails, no file is left behind."""


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

    from keras_prune.io import atomic_write

    name = output_format(args)
    if name == "litert" and args.values != "float32":
        raise CLIError("--values applies to --format sparse only; LiteRT stores float32 weights.")
    check_output(args, suffixes=(SUFFIXES[name],))
    model = load(args)
    inputs = sample_inputs(model)
    write = write_sparse if name == "sparse" else write_litert
    diffs = []
    # Written and checked under a temporary name: OUT appears only once it loads and matches.
    atomic_write(args.output, lambda tmp: diffs.append(write(model, tmp, inputs, args)))
    before, after = os.path.getsize(args.model), os.path.getsize(args.output)
    print(
        f"{args.output}: {after:,} bytes ({after / before:.3f}x of {args.model}, {before:,} bytes); "
        f"max |output difference| on {SAMPLES} random inputs: {diffs[0]:.3g}"
    )
    if name == "sparse":
        print(encodings_line(args.output))
    return 0


def encodings_line(path: str) -> str:
    """One line: how many tensors use each encoding, and the format version."""
    from keras_prune.export.sparse import encoding_summary, format_version

    labels = {"codebook": "codebook+rANS", "codebook_rows": "codebook+rANS (row contexts)", "nm": "N:M"}
    counts = ", ".join(f"{labels.get(name, name)} {count}" for name, count in encoding_summary(path).items())
    return f"tensor encodings: {counts or 'none'} (format version {format_version(path)})"


def write_sparse(model, path: str, inputs, args: argparse.Namespace) -> float:
    """Writes the .kpsparse file, loads it back; returns the largest output difference."""
    from keras_prune import export_sparse, load_sparse

    export_sparse(model, path, values=args.values, overwrite=True)
    loaded = load_sparse(path, safe_mode=not args.unsafe)
    return max_abs_diff(predict(model, inputs), predict(loaded, inputs))


def write_litert(model, path: str, inputs, args: argparse.Namespace) -> float:
    """Writes the LiteRT file; returns the largest difference of its outputs from Keras's."""
    from pathlib import Path

    from keras_prune.export.litert import convert_litert, litert_max_abs_diff

    content = convert_litert(model)
    Path(path).write_bytes(content)
    return litert_max_abs_diff(model, content, inputs)


def predict(model, inputs) -> list:
    """Every output of ``model`` on ``inputs`` as numpy arrays (one per output)."""
    import keras

    return [keras.ops.convert_to_numpy(o) for o in keras.tree.flatten(model(inputs, training=False))]


def max_abs_diff(expected: list, actual: list) -> float:
    import numpy as np

    return max(float(np.max(np.abs(np.asarray(a, "float64") - np.asarray(e, "float64")), initial=0.0))
               for e, a in zip(expected, actual, strict=True))


def sample_inputs(model, batch: int = SAMPLES, seed: int = 0):
    """Inputs for output comparisons: uniform [0, 1) floats (zeros for integer inputs) of the
    model's input shapes; one array, or a list for a model with several inputs."""
    import numpy as np

    try:
        tensors = list(model.inputs)
    except (AttributeError, TypeError, ValueError):  # a subclassed model has no declared inputs
        raise CLIError("export compares outputs on sample inputs, so it needs a model with declared "
                       "inputs (Sequential or functional).") from None
    rng = np.random.default_rng(seed)
    arrays = []
    for tensor in tensors:
        shape = tuple(tensor.shape)[1:]
        if any(d is None for d in shape):
            raise CLIError(f"export needs fixed input shapes to make sample inputs; input "
                           f"'{tensor.name}' has shape {shape}.")
        dtype = np.dtype(str(tensor.dtype))
        values = rng.random((batch, *shape)) if dtype.kind == "f" else np.zeros((batch, *shape))
        arrays.append(values.astype(dtype))
    return arrays[0] if len(arrays) == 1 else arrays
