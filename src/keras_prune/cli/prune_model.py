"""``keras-prune prune``: one-shot magnitude pruning of a model file, no training."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from keras_prune.cli import CLIError
from keras_prune.cli._common import (
    add_model_arguments,
    add_output_arguments,
    check_output,
    fraction,
    load,
    non_negative,
    print_report,
    save,
)

DESCRIPTION = """\
Zero the smallest-magnitude weights of every prunable layer (Dense, Conv, Embedding, RNN,
attention, ...) once, without training, and write the pruned model to OUT.

  --sparsity S    prune exactly round(S * n) weights of each tensor (--scope layer), or of all
                  selected tensors ranked together (--scope global)
  --threshold T   prune every weight with |w| <= T
  --pattern P     unstructured (default); M:N prunes the M smallest of every N consecutive
                  weights along the input axis (tfmot's sparsity_m_by_n=(M, N); 2:4 keeps 2 of
                  every 4, and sets the sparsity to M/N, so omit --sparsity); block:RxC prunes
                  whole RxC blocks of each kernel (needs --sparsity)

Accuracy usually drops without fine-tuning; see `keras-prune finetune`."""

EXAMPLES = """\
examples:
  keras-prune prune model.keras -o pruned.keras --sparsity 0.7 --scope global
  keras-prune prune model.keras -o pruned.keras --pattern 2:4 --exclude 'logits'"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prune",
        help="one-shot magnitude pruning (by sparsity or threshold), no training",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(parser)
    add_output_arguments(parser)
    amount = parser.add_mutually_exclusive_group()
    amount.add_argument("--sparsity", metavar="S", help="fraction of weights to prune, in [0, 1)")
    amount.add_argument("--threshold", metavar="T", help="prune weights with |w| <= T (T >= 0)")
    parser.add_argument(
        "--scope", choices=("layer", "global"), default="layer",
        help="rank weights per tensor (layer, default) or across all selected layers (global)",
    )
    parser.add_argument(
        "--pattern", default="unstructured", metavar="unstructured|M:N|block:RxC",
        help="sparsity pattern (default: unstructured); see above",
    )
    parser.add_argument("--layers", "--include", dest="layers", metavar="REGEX",
                        help="prune only layers whose path matches REGEX (paths as `keras-prune inspect` lists them)")
    parser.add_argument("--exclude", metavar="REGEX", help="leave out layers whose path matches REGEX")
    parser.add_argument("--report", metavar="FILE.json", help="also write the report as JSON")
    parser.set_defaults(run=run)


def parse_pattern(text: str) -> dict:
    """``"unstructured"``, ``"M:N"`` or ``"block:RxC"`` -> ``block_size``/``sparsity_m_by_n``."""
    text = text.strip().lower()
    if text == "unstructured":
        return {}
    m_by_n = re.fullmatch(r"(\d+):(\d+)", text)
    if m_by_n:
        m, n = int(m_by_n[1]), int(m_by_n[2])
        if not 0 < m < n:
            raise CLIError(f"--pattern M:N needs 0 < M < N, such as 2:4. Received: --pattern {text}")
        return {"sparsity_m_by_n": (m, n)}
    block = re.fullmatch(r"block:(\d+)x(\d+)", text)
    if block and int(block[1]) >= 1 and int(block[2]) >= 1:
        return {"block_size": (int(block[1]), int(block[2]))}
    raise CLIError(
        "--pattern must be unstructured, M:N (such as 2:4) or block:RxC (such as block:1x4). "
        f"Received: --pattern {text}"
    )


def layer_filter(model, include: str | None, exclude: str | None):
    """A ``layer -> bool`` filter from --layers/--exclude regexes on layer paths, or None.

    Each given regex must match a layer that holds prunable weights, and together they must
    leave at least one: a flag that selects nothing is an error, not a silent no-op.
    """
    from keras_prune.analysis.report import iter_layers
    from keras_prune.oneshot import prunable_paths

    if include is None and exclude is None:
        return None
    inc, exc = _compile("--layers", include), _compile("--exclude", exclude)

    def path_wanted(path: str) -> bool:
        return (inc is None or inc.search(path) is not None) and (exc is None or exc.search(path) is None)

    candidates = prunable_paths(model)
    if candidates:  # else the API names the real problem: the model has nothing to prune
        _check_selection(candidates, include, inc, exclude, exc, path_wanted)
    paths = {id(layer): path for path, layer in iter_layers(model)}

    def wanted(layer) -> bool:
        path = paths.get(id(layer))  # sub-layers of a layer are pruned (or not) with it
        return path is not None and path_wanted(path)

    return wanted


def _compile(flag: str, text: str | None):
    if text is None:
        return None
    try:
        return re.compile(text)
    except re.error as error:
        raise CLIError(f"{flag} is not a valid regular expression ({error}). Received: {flag} {text}") from None


def _check_selection(candidates: list[str], include, inc, exclude, exc, path_wanted) -> None:
    """Raises if a flag matches no prunable layer, or the two together leave none."""
    from keras_prune.oneshot import list_paths

    listing = f"layers with prunable weights: {list_paths(candidates)} (`keras-prune inspect MODEL` lists them)"
    for flag, text, pattern, effect in (
        ("--layers", include, inc, "would select nothing"),
        ("--exclude", exclude, exc, "would leave out nothing"),
    ):
        if pattern is not None and not any(pattern.search(path) for path in candidates):
            raise CLIError(
                f"{flag} matches no layer with prunable weights, so it {effect}; fix the regex or "
                f"drop {flag}. Received: {flag} {text}; {listing}."
            )
    if not any(path_wanted(path) for path in candidates):
        raise CLIError(
            "--layers and --exclude together leave no layer to prune; narrow --exclude. "
            f"Received: --layers {include} --exclude {exclude}; {listing}."
        )


def run(args: argparse.Namespace) -> int:
    from keras_prune.io import atomic_write, check_output_path
    from keras_prune.oneshot import magnitude_prune

    sparsity = fraction("--sparsity", args.sparsity)
    threshold = non_negative("--threshold", args.threshold)
    pattern = parse_pattern(args.pattern)
    if sparsity is None and threshold is None and "sparsity_m_by_n" not in pattern:
        raise CLIError("Give --sparsity S or --threshold T (or --pattern M:N), such as --sparsity 0.8.")
    if "sparsity_m_by_n" in pattern and (sparsity is not None or threshold is not None):
        raise CLIError("--pattern M:N sets the sparsity to M/N; drop --sparsity/--threshold.")
    check_output(args)
    if args.report:
        check_output_path(args.report, overwrite=args.overwrite, inputs=[args.model], suffixes=(".json",))
    model = load(args)
    report = magnitude_prune(
        model,
        sparsity=sparsity,
        threshold=threshold,
        scope=args.scope,
        layers=layer_filter(model, args.layers, args.exclude),
        **pattern,
    )
    report.settings.update(model=args.model, output=args.output, layers=args.layers, exclude=args.exclude)
    save(model, args)
    if args.report:
        atomic_write(args.report, lambda tmp: Path(tmp).write_text(report.to_json() + "\n"))
    print_report(report, title=f"{args.output} (pruned from {args.model})")
    return 0
