"""``keras-prune demo``: train, prune and measure a model on MNIST data shipped with the package."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Train LeNet-300-100 on a 6,000-image MNIST subset shipped with keras-prune, prune it
gradually (PolynomialDecay) to --sparsity while fine-tuning, strip the pruning state, and
compare the dense and the pruned model: test accuracy on 1,000 held-out images, sparsity,
and file sizes (.keras, gzipped, and the compact .kpsparse format of export_sparse).
Runs offline in about a minute on 2 CPU cores. The model files and demo.json go to a new
temporary folder unless --output-dir is given."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="train, prune and measure a small MNIST model (offline, about a minute)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--epochs", type=int, default=10, help="epochs of dense training (default: 10)")
    parser.add_argument(
        "--prune-epochs", type=int, default=10,
        help="epochs of fine-tuning while pruning; sparsity ramps up over the first 2/3 (default: 10)",
    )
    parser.add_argument(
        "--sparsity", type=float, default=0.9,
        help="fraction of each Dense kernel to prune, in [0, 1) (default: 0.9)",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="training batch size (default: 32)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument(
        "--output-dir", metavar="DIR",
        help="folder for dense.keras, pruned.keras, pruned.kpsparse and demo.json (created if missing; "
        "default: a new temporary folder)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace the demo's files in --output-dir")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from keras_prune.demo import run_demo

    result = run_demo(
        epochs=args.epochs,
        prune_epochs=args.prune_epochs,
        sparsity=args.sparsity,
        output_dir=args.output_dir,
        overwrite=args.overwrite,
        batch_size=args.batch_size,
        seed=args.seed,
        progress=not args.no_progress,
    )
    Console().print(result_table(result))
    return 0


def result_table(result):
    """A rich table of the dense vs pruned figures of a :class:`~keras_prune.demo.DemoResult`."""
    from rich.table import Table

    dense, pruned = result.dense, result.pruned
    table = Table(
        title=f"LeNet-300-100 on MNIST, pruned to {result.target_sparsity:.0%}",
        caption=f"{result.seconds:.0f} s; files in {result.output_dir}",
    )
    table.add_column("")
    for name in ("dense", "pruned", "pruned / dense"):
        table.add_column(name, justify="right")
    table.add_row(
        "test accuracy", f"{dense.accuracy:.2%}", f"{pruned.accuracy:.2%}",
        f"{(pruned.accuracy - dense.accuracy) * 100:+.2f} pts",
    )
    table.add_row("sparsity (Dense kernels)", f"{dense.sparsity:.1%}", f"{pruned.sparsity:.1%}", "")
    table.add_row(
        "nonzero weights", f"{dense.nonzero_weights:,}", f"{pruned.nonzero_weights:,}",
        _ratio(pruned.nonzero_weights, dense.nonzero_weights),
    )
    for label, attr in ((".keras file", "keras_bytes"), (".keras gzipped", "gzip_bytes")):
        before, after = getattr(dense, attr), getattr(pruned, attr)
        table.add_row(label, _kb(before), _kb(after), _ratio(after, before))
    table.add_row(
        ".kpsparse (export_sparse)", "", _kb(result.sparse_bytes),
        _ratio(result.sparse_bytes, dense.keras_bytes),
    )
    return table


def _kb(size: int) -> str:
    return f"{size / 1024:,.1f} KiB"


def _ratio(after: int, before: int) -> str:
    return f"{after / before:.2f}x" if before else ""
