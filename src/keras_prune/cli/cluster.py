"""``keras-prune cluster``: weight clustering (tfmot's ``cluster_weights``), optionally fine-tuned."""

from __future__ import annotations

import argparse

from keras_prune.cli import CLIError
from keras_prune.cli._checkpoint import Checkpoint
from keras_prune.cli._common import add_model_arguments, add_output_arguments, check_output, save
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
from keras_prune.cli.prune_model import layer_filter

DESCRIPTION = f"""\
Cluster the weights of every Dense, Conv, EinsumDense, Embedding, RNN and attention layer (at
any depth, biases left as they are): each tensor keeps only --clusters distinct values, its
centroids (per output channel with --per-channel), so it compresses to a small table plus a
few bits per weight. With --preserve-sparsity the weights that are exactly 0 (a pruned model's)
stay 0 and outside the clusters.

--init chooses the first centroids: kmeans++ (default; k-means, the lowest error), linear
(evenly spaced from the smallest weight to the largest), density (evenly spaced quantiles) or
random. With --data, the clustered model is then fine-tuned: every centroid trains (it moves by
the mean update of its weights) while each weight stays in its cluster; OUT holds the same
number of distinct values.

{DATA_HELP}"""

EXAMPLES = """\
examples:
  keras-prune cluster model.keras -o clustered.keras --clusters 16
  keras-prune cluster pruned.keras -o clustered.keras --clusters 8 --preserve-sparsity --per-channel
  keras-prune cluster model.keras -o clustered.keras --clusters 16 --data train.npz --epochs 2
  keras-prune cluster pruned.keras -o clustered.keras --clusters fc1/kernel=8,fc2/kernel=16 --preserve-sparsity"""

INITS = {"kmeans++": "KMEANS_PLUS_PLUS", "linear": "LINEAR", "density": "DENSITY_BASED", "random": "RANDOM"}
# The flags that define a run, besides the fine-tuning ones; a checkpoint resumes only its own.
RUN_KEYS = ("clusters", "init", "preserve_sparsity", "per_channel", "layers", "exclude", "seed")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "cluster",
        help="weight clustering: N distinct values per tensor (or channel), optionally fine-tuned",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(parser)
    add_output_arguments(parser)
    parser.add_argument("--clusters", required=True, metavar="N | WEIGHT=N,...",
                        help="distinct values per tensor (per channel with --per-channel), >= 2; or a count per "
                             "weight, e.g. fc1/kernel=8,fc2/kernel=16 (only those weights are clustered; keys as "
                             "`keras-prune inspect` names weights)")
    parser.add_argument("--init", choices=tuple(INITS), default="kmeans++",
                        help="how the centroids start (default: kmeans++)")
    parser.add_argument("--preserve-sparsity", action="store_true",
                        help="keep weights that are exactly 0 at 0, outside the clusters")
    parser.add_argument("--per-channel", action="store_true",
                        help="cluster each output channel (last axis of a kernel) on its own")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kmeans++ and random initializations")
    parser.add_argument("--layers", "--include", dest="layers", metavar="REGEX",
                        help="cluster only layers whose path matches REGEX (paths as `keras-prune inspect` lists them)")
    parser.add_argument("--exclude", metavar="REGEX", help="leave out layers whose path matches REGEX")
    add_training_arguments(parser, epochs=2, data_required=False)
    parser.set_defaults(run=run)


def cluster_counts(text: str) -> int | dict[str, int]:
    """``--clusters``: ``N``, or ``WEIGHT=N,WEIGHT=N,...``; each count an integer >= 2."""

    def count(value: str) -> int:
        try:
            k = int(value)
        except ValueError:
            raise CLIError(f"--clusters takes N or WEIGHT=N,...; {value!r} is not an integer.") from None
        if k < 2:
            raise CLIError(f"--clusters must be >= 2. Received: --clusters {text}")
        return k

    if "=" not in text:
        return count(text.strip())
    counts = {}
    for item in text.split(","):
        key, sep, value = item.rpartition("=")
        if not sep or not key.strip():
            raise CLIError(f"--clusters takes WEIGHT=N items separated by commas; {item!r} is not one.")
        counts[key.strip()] = count(value.strip())
    return counts


def run(args: argparse.Namespace) -> int:
    import keras

    from keras_prune.clustering import cluster_weights, strip_clustering

    counts = cluster_counts(args.clusters)
    check_training_flags(args)
    check_output(args)
    tune = bool(args.data) and args.epochs > 0
    checkpoint = Checkpoint(args, RUN_KEYS) if tune else None

    model = load_unpruned(args)
    wanted = layer_filter(model, args.layers, args.exclude)
    data = config = None
    dense_scores: dict = {}
    if tune:
        data = load_data(args, model)
        config = compile_config(keras, model, args)
        dense_scores = evaluate(model, config, data, args.batch_size)
    clustered, done = checkpoint.load(args.unsafe) if checkpoint else (None, 0)
    if clustered is None:
        clustered = cluster_weights(model, counts, INITS[args.init], preserve_sparsity=args.preserve_sparsity,
                                    cluster_per_channel=args.per_channel, layers=wanted, seed=args.seed)
        if tune:
            clustered.compile_from_config(config)
    if tune:
        fit_resumably(clustered, data, args, checkpoint, done)
    rows = table_rows(clustered)
    trained = (clustered.optimizer, clustered.trainable_variables) if tune else None  # before stripping
    stripped = strip_clustering(clustered)
    if tune:
        stripped.compile_from_config(config)
    elif model.compiled:
        stripped.compile_from_config(model.get_compile_config())
    clustered_scores = evaluate(stripped, config, data, args.batch_size) if tune else {}
    if args.keep_optimizer and tune:
        keep_optimizer_state(*trained, stripped)
    save(stripped, args)
    if checkpoint:
        checkpoint.clear()
    print_table(rows, title=f"{args.output} (clustered from {args.model})", per_channel=args.per_channel)
    for name, before in dense_scores.items():
        print(f"validation {name}: dense {before:.4f} -> clustered {clustered_scores[name]:.4f}")
    return 0


def table_rows(clustered) -> list[tuple[str, tuple, int, int, int]]:
    """``(weight, shape, clusters, most distinct values in a tensor or channel, zeros kept)`` per
    clustered weight."""
    import numpy as np

    rows = []
    for name, values, indices, k in zip(clustered.weight_names(), clustered.weight_values(),
                                        clustered.cluster_indices(), clustered.cluster_counts()):
        if clustered.cluster_per_channel and values.ndim:
            flat = values.reshape(-1, values.shape[-1])
            distinct = max(len(np.unique(flat[:, c][flat[:, c] != 0] if clustered.preserve_sparsity else flat[:, c]))
                           for c in range(flat.shape[1]))
        else:
            distinct = len(np.unique(values[values != 0] if clustered.preserve_sparsity else values))
        rows.append((name, values.shape, k, distinct, int(np.sum(indices == -1))))
    return rows


def print_table(rows, title: str, per_channel: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console = Console(width=150)
    table = Table(title=title)
    table.add_column("weight")
    table.add_column("shape")
    table.add_column("clusters" + (" per channel" if per_channel else ""), justify="right")
    table.add_column("distinct values" + (" (most in a channel)" if per_channel else ""), justify="right")
    table.add_column("zeros kept", justify="right")
    for name, shape, clusters, distinct, zeros in rows:
        table.add_row(name, "x".join(map(str, shape)), str(clusters), str(distinct), str(zeros))
    console.print(table)
    print(f"{len(rows)} weights clustered.")
