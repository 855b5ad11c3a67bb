"""``keras-prune prune``: one-shot pruning of a model file (by magnitude, or calibrated with
Wanda or SparseGPT), no training."""

from __future__ import annotations

import argparse
import math
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
from keras_prune.cli._evaluation import add_evaluation_arguments, check_evaluation_flags, evaluation_data

DESCRIPTION = """\
Zero the least important weights of every prunable layer (Dense, Conv, Embedding, RNN,
attention, ...) once, without training, and write the pruned model to OUT.

  --sparsity S    prune exactly round(S * n) weights of each tensor (--scope layer), or of all
                  selected tensors ranked together (--scope global)
  --threshold T   prune every weight with |w| <= T (magnitude only)
  --pattern P     unstructured (default); M:N prunes the M smallest of every N consecutive
                  weights along the input axis (tfmot's sparsity_m_by_n=(M, N); 2:4 keeps 2 of
                  every 4, and sets the sparsity to M/N, so omit --sparsity); block:RxC prunes
                  whole RxC blocks of each kernel (needs --sparsity; magnitude only).
                  --m-by-n M:N is the same as --pattern M:N.

--method chooses how weights are ranked: magnitude (default) by |w| alone; wanda by |w| times
the norm of its input over calibration data; sparsegpt prunes layer by layer and updates the
remaining weights to make up for the pruned ones (best accuracy, slowest). wanda and sparsegpt
run the model on --calibration DATA, of which --samples examples (default 128) are used:

  .npz file       x_train (no labels needed); for a model with several inputs, one array
                  per input, named as the inputs (such as token_ids and padding_mask)
  IDX folder, image folder   as `keras-prune finetune` reads them (scaled by --image-scale)
  .txt file       UTF-8 text for a language model, cut into --samples windows of
                  --sequence-length tokens evenly spread over the text (default: the model's
                  fixed input length, else 128, at most the model's max_sequence_length), by
                  --vocabulary FILE: a character vocabulary, the i-th character of the UTF-8
                      file is token id i (every character counts, newlines too), or a .json
                      list of one-character strings
                  --tokenizer DIR: a KerasHub tokenizer or preprocessor preset folder
                  A model whose inputs are token_ids and padding_mask (KerasHub) gets an
                  all-ones padding mask; any other model the token ids alone.

--allocation spreads --sparsity over the layers by a rule (one overall count, exact):
uniform, global (one magnitude ranking), erk (small layers keep more), owl (layers whose
inputs have more outliers keep more; needs --calibration or --data) or sensitivity (from the
measurements of `keras-prune analyze`, --sensitivity FILE.json, or measured now on --data).

--max-drop D searches for the highest overall sparsity whose metric on --data stays within D
(points of accuracy, such as 1.0; for --metric loss, the allowed increase), by bisection,
pruning one-shot by --method with --allocation (default global) at each step; the report
shows every step. DATA is labelled, as for `keras-prune analyze`.

Accuracy usually drops without fine-tuning; see `keras-prune finetune`."""

EXAMPLES = """\
examples:
  keras-prune prune model.keras -o pruned.keras --sparsity 0.7 --scope global
  keras-prune prune model.keras -o pruned.keras --pattern 2:4 --exclude 'logits'
  keras-prune prune model.keras -o pruned.keras --method sparsegpt --sparsity 0.5 --calibration train.npz
  keras-prune prune lm.keras -o pruned.keras --method sparsegpt --m-by-n 2:4 --calibration text.txt \\
      --vocabulary chars.txt --layers transformer_layer
  keras-prune prune model.keras -o pruned.keras --sparsity 0.9 --allocation erk
  keras-prune prune model.keras -o pruned.keras --max-drop 1.0 --data mnist.npz --method sparsegpt"""

# Flags that only the calibrated methods read.
CALIBRATION_FLAGS = ("calibration", "samples", "vocabulary", "tokenizer", "sequence_length", "image_scale")
DEFAULT_SAMPLES = 128
RULES = ("uniform", "global", "erk", "owl", "sensitivity")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prune",
        help="one-shot pruning by magnitude, or calibrated (wanda, sparsegpt), no training",
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
        "--pattern", metavar="unstructured|M:N|block:RxC",
        help="sparsity pattern (default: unstructured); see above",
    )
    parser.add_argument("--m-by-n", metavar="M:N", help="the same as --pattern M:N")
    parser.add_argument("--layers", "--include", dest="layers", metavar="REGEX",
                        help="prune only layers whose path matches REGEX (paths as `keras-prune inspect` lists them)")
    parser.add_argument("--exclude", metavar="REGEX", help="leave out layers whose path matches REGEX")
    parser.add_argument("--report", metavar="FILE.json", help="also write the report as JSON")
    parser.add_argument("--quiet", action="store_true", help="hide the progress display")
    calibrated = parser.add_argument_group("calibrated pruning (--method wanda or sparsegpt)")
    calibrated.add_argument("--method", choices=("magnitude", "wanda", "sparsegpt"), default="magnitude",
                            help="how to rank the weights (default: magnitude); see above")
    calibrated.add_argument("--calibration", metavar="DATA", help=".npz file, IDX folder, image folder or .txt file")
    calibrated.add_argument("--samples", type=int, metavar="N",
                            help=f"calibration examples to use (default: {DEFAULT_SAMPLES})")
    calibrated.add_argument("--vocabulary", metavar="FILE", help="character vocabulary for a .txt DATA (see above)")
    calibrated.add_argument("--tokenizer", metavar="DIR", help="KerasHub tokenizer preset folder for a .txt DATA")
    calibrated.add_argument("--sequence-length", type=int, metavar="L", help="tokens per window of a .txt DATA")
    calibrated.add_argument("--image-scale", type=float, metavar="X",
                            help="multiply image pixels (0-255) by X (default: 1/255)")
    budget = parser.add_argument_group("allocation and accuracy budget")
    budget.add_argument("--allocation", choices=RULES, help="spread --sparsity over the layers by this rule")
    budget.add_argument("--sensitivity", metavar="FILE.json", help="`keras-prune analyze` output for --allocation "
                        "sensitivity")
    budget.add_argument("--max-drop", metavar="D", help="find the highest sparsity within this metric drop (see above)")
    add_evaluation_arguments(parser, budget)
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


def pattern_arguments(pattern: str | None, m_by_n: str | None) -> dict:
    """``--pattern`` and its alias ``--m-by-n`` as one ``parse_pattern`` result; both given must agree."""
    if m_by_n is None:
        return parse_pattern(pattern or "unstructured")
    match = re.fullmatch(r"\s*(\d+):(\d+)\s*", m_by_n)
    if not match or not 0 < int(match[1]) < int(match[2]):
        raise CLIError(f"--m-by-n must be M:N with 0 < M < N, such as 2:4. Received: --m-by-n {m_by_n}")
    parsed = {"sparsity_m_by_n": (int(match[1]), int(match[2]))}
    if pattern is not None and parse_pattern(pattern) != parsed:
        raise CLIError(f"--m-by-n is another name for --pattern M:N; give one of them. Received: --pattern {pattern} "
                       f"--m-by-n {m_by_n}")
    return parsed


def check_method(args: argparse.Namespace, threshold: float | None, pattern: dict) -> None:
    """One-line errors for flags that do not go with ``--method``, before anything is loaded."""
    given = [f"--{name.replace('_', '-')}" for name in CALIBRATION_FLAGS if getattr(args, name) is not None]
    if args.method == "magnitude":
        if given:
            raise CLIError(f"{' and '.join(given)} would be unused: --method magnitude ranks weights by |w| alone, "
                           "without data. Drop them, or pass --method sparsegpt (or wanda).")
        return
    method = f"--method {args.method}"
    if threshold is not None:
        raise CLIError(f"--threshold is for --method magnitude only; {method} takes --sparsity S or --m-by-n M:N.")
    if "block_size" in pattern:
        raise CLIError(f"--pattern block:RxC is for --method magnitude only; {method} takes unstructured or M:N "
                       "patterns.")
    if args.calibration is None and args.data is not None:
        return  # calibrates on the training part of --data
    if args.calibration is None:
        raise CLIError(f"{method} needs --calibration DATA (a .npz file, IDX folder, image folder or .txt file) to "
                       "see the inputs of each layer; or use --method magnitude, which needs no data.")
    if not Path(args.calibration).exists():
        raise CLIError(f"--calibration '{args.calibration}' does not exist. Check the path.")
    for flag, value in (("--samples", args.samples), ("--sequence-length", args.sequence_length)):
        if value is not None and value < 1:
            raise CLIError(f"{flag} must be >= 1, such as 128. Received: {flag} {value}")
    if args.image_scale is not None and not (math.isfinite(args.image_scale) and args.image_scale > 0):
        raise CLIError(f"--image-scale must be a finite number > 0, such as 0.00392 (1/255). Received: "
                       f"--image-scale {args.image_scale}")
    text_flags = [flag for flag in ("--vocabulary", "--tokenizer", "--sequence-length") if flag in given]
    if not _is_text(args.calibration):
        if text_flags:
            raise CLIError(f"{' and '.join(text_flags)} only serve a .txt --calibration file; drop them. Received: "
                           f"--calibration {args.calibration}")
    elif (args.vocabulary is None) == (args.tokenizer is None):
        raise CLIError("A .txt --calibration file needs exactly one of --vocabulary FILE (characters as tokens) and "
                       "--tokenizer DIR (a KerasHub tokenizer preset) to turn the text into token ids.")


def _is_text(path: str) -> bool:
    return Path(path).suffix.lower() == ".txt"


def load_calibration(args: argparse.Namespace, model):
    """The inputs of --calibration DATA for ``model``: token windows of a .txt file, else the
    x arrays of a .npz file, IDX folder or image folder."""
    from keras_prune.text_data import load_text_calibration
    from keras_prune.training_data import load_inputs

    if _is_text(args.calibration):
        return load_text_calibration(
            args.calibration, model, vocabulary=args.vocabulary, tokenizer=args.tokenizer,
            sequence_length=args.sequence_length, samples=args.samples or DEFAULT_SAMPLES,
        )
    scale = 1 / 255 if args.image_scale is None else args.image_scale
    return load_inputs(args.calibration, model, image_scale=scale)


def check_budget(args: argparse.Namespace, sparsity, threshold, pattern: dict) -> float | None:
    """One-line errors for --allocation, --max-drop and the evaluation flags; returns --max-drop."""
    max_drop = non_negative("--max-drop", args.max_drop)
    evaluation = [flag for flag, value in (("--data", args.data), ("--metric", args.metric), ("--loss", args.loss))
                  if value is not None]
    if max_drop is not None:
        check_evaluation_flags(args)
        given = [flag for flag, on in (("--sparsity", sparsity is not None), ("--threshold", threshold is not None),
                                       ("--pattern", bool(pattern)), ("--scope global", args.scope == "global"))
                 if on]
        if given:
            raise CLIError(f"--max-drop searches the sparsity itself, unstructured and spread by --allocation; drop "
                           f"{' and '.join(given)}.")
        return max_drop
    if args.allocation is None:
        if evaluation or args.sensitivity:
            unused = evaluation + (["--sensitivity"] if args.sensitivity else [])
            raise CLIError(f"{' and '.join(unused)} would be unused: they serve --max-drop D and --allocation. "
                           "Drop them, or add --max-drop D.")
        return None
    if sparsity is None or threshold is not None or pattern or args.scope == "global":
        raise CLIError(f"--allocation {args.allocation} spreads --sparsity S over the layers: give --sparsity S, "
                       "without --threshold, --pattern or --scope global.")
    needs = {"owl": args.calibration or args.data, "sensitivity": args.sensitivity or args.data}
    if args.allocation in needs and not needs[args.allocation]:
        what = "--calibration DATA or --data DATA" if args.allocation == "owl" else "--sensitivity FILE.json " \
            "(from `keras-prune analyze`) or --data DATA"
        raise CLIError(f"--allocation {args.allocation} needs {what}.")
    if args.data:
        check_evaluation_flags(args)
    return None


def _sensitivity_result(args: argparse.Namespace):
    from keras_prune.sensitivity import SensitivityResult

    if args.sensitivity is None:
        return None
    try:
        return SensitivityResult.from_json(Path(args.sensitivity))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CLIError(f"--sensitivity '{args.sensitivity}' is not a `keras-prune analyze` JSON file: {error}") \
            from None


def _data(args: argparse.Namespace, model) -> tuple:
    """``((x, y) to evaluate on or None, inputs to calibrate on or None)``."""
    evaluation, inputs = (None, None)
    scale = 1 / 255 if args.image_scale is None else args.image_scale
    if args.data:
        evaluation, inputs = evaluation_data(args, model, scale)
    if args.calibration:
        inputs = load_calibration(args, model)
    return evaluation, inputs


def _within_budget(args: argparse.Namespace, model, layers, max_drop: float):
    from keras_prune.budget import prune_to_budget
    from keras_prune.evaluation import Evaluator

    evaluation, inputs = _data(args, model)
    evaluator = Evaluator(model, evaluation, metric=args.metric, samples=args.eval_samples)
    points = evaluator.higher_is_better  # accuracy-like metrics take points, losses their own units
    report = prune_to_budget(
        model, evaluation, max_drop=max_drop / 100 if points else max_drop, metric=args.metric, method=args.method,
        rule=args.allocation or "global", calibration_data=inputs, sensitivity=_sensitivity_result(args),
        layers=layers, samples=args.eval_samples, calibration_samples=args.samples or DEFAULT_SAMPLES,
        progress=not args.quiet,
    )
    report.settings.update(data=args.data, calibration=args.calibration)
    return report


def _allocated(args: argparse.Namespace, model, layers, sparsity: float) -> tuple[dict, object]:
    """Per-weight sparsities by --allocation, and the calibration inputs (if any) for the method."""
    from keras_prune.allocation import allocate

    evaluation, inputs = _data(args, model)
    result = _sensitivity_result(args)
    if args.allocation == "sensitivity" and result is None:
        from keras_prune.sensitivity import sensitivity

        result = sensitivity(model, evaluation, method=args.method, metric=args.metric, layers=layers,
                             samples=args.eval_samples, calibration_data=None if args.method == "magnitude" else inputs,
                             calibration_samples=args.samples or DEFAULT_SAMPLES, progress=not args.quiet)
    allocation = allocate(model, sparsity, rule=args.allocation, layers=layers, calibration_data=inputs,
                          sensitivity=result, samples=args.samples or DEFAULT_SAMPLES)
    return dict(allocation), inputs


def run(args: argparse.Namespace) -> int:
    from keras_prune.io import atomic_write, check_output_path

    sparsity = fraction("--sparsity", args.sparsity)
    threshold = non_negative("--threshold", args.threshold)
    pattern = pattern_arguments(args.pattern, args.m_by_n)
    check_method(args, threshold, pattern)
    max_drop = check_budget(args, sparsity, threshold, pattern)
    if max_drop is None and sparsity is None and threshold is None and "sparsity_m_by_n" not in pattern:
        if args.method != "magnitude":
            raise CLIError("Give --sparsity S (or --m-by-n M:N, or --max-drop D), such as --sparsity 0.5.")
        raise CLIError("Give --sparsity S or --threshold T (or --pattern M:N, or --max-drop D), such as "
                       "--sparsity 0.8.")
    if "sparsity_m_by_n" in pattern and (sparsity is not None or threshold is not None):
        raise CLIError(f"--{'m-by-n' if args.m_by_n else 'pattern'} M:N sets the sparsity to M/N; drop "
                       "--sparsity/--threshold.")
    check_output(args)
    if args.report:
        check_output_path(args.report, overwrite=args.overwrite, inputs=[args.model], suffixes=(".json",))
    model = load(args)
    layers = layer_filter(model, args.layers, args.exclude)
    if max_drop is not None:
        report = _within_budget(args, model, layers, max_drop)
    else:
        report = _prune(args, model, layers, sparsity, threshold, pattern)
    report.settings.update(model=args.model, output=args.output, layers=args.layers, exclude=args.exclude)
    save(model, args)
    if args.report:
        atomic_write(args.report, lambda tmp: Path(tmp).write_text(report.to_json() + "\n"))
    print_report(report, title=f"{args.output} (pruned from {args.model})")
    if max_drop is not None:
        print_search(report)
    return 0


def _prune(args: argparse.Namespace, model, layers, sparsity, threshold, pattern: dict):
    """One-shot pruning at --sparsity (spread by --allocation if given), --threshold or M:N."""
    inputs = None
    if args.allocation:
        sparsity, inputs = _allocated(args, model, layers, sparsity)
    if args.method == "magnitude":
        from keras_prune.oneshot import magnitude_prune

        report = magnitude_prune(model, sparsity=sparsity, threshold=threshold, scope=args.scope, layers=layers,
                                 **pattern)
    else:
        from keras_prune.calibrated import oneshot_prune

        inputs = inputs if inputs is not None else _data(args, model)[1]
        report = oneshot_prune(
            model, inputs, method=args.method, sparsity=sparsity, scope=args.scope,
            layers=layers, samples=args.samples or DEFAULT_SAMPLES, progress=not args.quiet, **pattern,
        )
        report.settings.update(calibration=args.calibration)
    report.settings.update(allocation=args.allocation)
    return report


def print_search(report) -> None:
    """The budget search's steps, one line each."""
    settings = report.settings
    print(f"dense {settings['metric']}: {settings['dense_metric']:.4g}; allowed drop {settings['max_drop']:.4g}")
    for step, probe in enumerate(report.history, 1):
        verdict = "within" if probe["within"] else "over"
        print(f"  step {step}: sparsity {probe['sparsity']:.1%} -> {settings['metric']} {probe['metric']:.4g} "
              f"(drop {probe['drop']:.4g}, {verdict})")
    print(f"reached {settings['reached_sparsity']:.1%} overall sparsity within the budget")
