"""A character-level GPT-2 on Tiny Shakespeare: dense vs unstructured, 2:4 and structured pruning.

The model is keras_hub's GPT2Backbone built from its constructor (no download): 4 layers,
4 heads, width 192, feed-forward 768, context 128, about 1.8M parameters, with the logits
read from the tied token embedding. It is pretrained once on the first 90% of the text
(Adam with warm-up and cosine decay, gradient norm clipped at 1) and cached. Then every
fine-tuning leg starts from those same pretrained weights and trains for the same number of
steps on the same batches with the same optimizer (Adam, cosine decay, clipped):

* dense: no pruning, the control every other leg is compared with;
* unstructured 50% / 75% / 90%: prune_low_magnitude with PolynomialDecay(0 -> s) over the
  first two thirds of the steps, UpdatePruningStep, then strip_pruning;
* 2:4: prune_low_magnitude with sparsity_m_by_n=(2, 4) (ConstantSparsity 0.5 from step 0);
* structured 50%: prune_channels(model, 0.5) removes half of the attention heads and of the
  feed-forward units of every block, then the smaller dense model is fine-tuned.

The magnitude-pruned legs prune the kernels of the transformer blocks (attention query, key,
value and output projections, both feed-forward layers); the token and position embeddings
(the token embedding is also the output layer) stay dense. Validation loss is the mean
next-character cross-entropy in nats/char over every non-overlapping 128-character window of
the last 10% of the text. CPU latency of the dense vs the structurally shrunk model (a
128-character input) is measured interleaved, side by side in one process, at batch 1 and 8,
in TensorFlow (a compiled tf.function) and in LiteRT's interpreter.

    .venv/bin/python benchmarks/bench_transformers.py --quick                # smoke run, < 1 min
    .venv/bin/python benchmarks/bench_transformers.py --write-docs           # full run, ~35 min on 2 cores
    .venv/bin/python benchmarks/bench_transformers.py --legs dense,2:4       # some legs (pretraining cached)

Prints the tables and the targets (PASS/FAIL), writes benchmarks/results/transformers[_quick].json
and, with --write-docs, docs/transformers.md. A leg that fails is reported as failed in the
table (with the reason) and the other legs still run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CACHE = ROOT / "benchmarks" / ".cache" / "transformers"
DOCS = ROOT / "docs" / "transformers.md"

FULL = {"num_layers": 4, "num_heads": 4, "hidden_dim": 192, "intermediate_dim": 768, "seq_len": 128,
        "batch_size": 32, "pretrain_steps": 1500, "finetune_steps": 300, "repeats": 50,
        "val_windows": None, "log_every": 100, "frequency": 10}
QUICK = {"num_layers": 1, "num_heads": 2, "hidden_dim": 32, "intermediate_dim": 64, "seq_len": 32,
         "batch_size": 8, "pretrain_steps": 20, "finetune_steps": 6, "repeats": 3,
         "val_windows": 32, "log_every": 10, "frequency": 2}

LEGS = ("dense", "unstructured_50", "unstructured_75", "unstructured_90", "2:4", "structured_50")
LABELS = {
    "pretrained": "dense, pretrained (before fine-tuning)",
    "dense": "dense control",
    "unstructured_50": "unstructured 50%",
    "unstructured_75": "unstructured 75%",
    "unstructured_90": "unstructured 90%",
    "2:4": "2:4 (50%)",
    "structured_oneshot": "structured 50% heads+FFN, before fine-tuning",
    "structured_50": "structured 50% heads+FFN",
}
RUNTIMES = {"keras": "TF (tf.function)", "litert": "LiteRT"}
LATENCY_BATCHES = (1, 8)
TARGETS = {
    "unstructured_50": ("unstructured 50%: loss within 0.01 nats/char of the dense control", 0.01),
    "2:4": ("2:4: loss within 0.03 nats/char of the dense control", 0.03),
    "structured_50": ("structured 50% heads+FFN: >= 1.5x faster at batch 1 in LiteRT", 1.5),
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data",
                        help="folder holding tinyshakespeare/input.txt (default: ../shared/data relative to "
                             "the repository root)")
    parser.add_argument("--cache-dir", type=Path, default=CACHE,
                        help="where the pretrained dense weights are kept between runs (default: "
                             "benchmarks/.cache/transformers, ignored by git)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run, under a minute: a tiny model (1 layer, width 32, context 32), a few "
                             "steps, a few latency rounds; the numbers mean nothing")
    parser.add_argument("--legs", default=",".join(LEGS),
                        help=f"comma-separated fine-tuning legs to run (default: all of {','.join(LEGS)})")
    parser.add_argument("--pretrain-steps", type=int, default=None, help="dense pretraining steps (1500)")
    parser.add_argument("--finetune-steps", type=int, default=None,
                        help="fine-tuning steps of every leg (300)")
    parser.add_argument("--batch-size", type=int, default=None, help="windows per training step (32)")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak pretraining learning rate (2e-3)")
    parser.add_argument("--finetune-lr", type=float, default=5e-4,
                        help="fine-tuning learning rate of every leg, cosine-decayed to a tenth (5e-4)")
    parser.add_argument("--repeats", type=int, default=None, help="timed latency rounds (50)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--retrain", action="store_true",
                        help="pretrain again even if the cache holds weights for these settings "
                             "(the cached file is then replaced)")
    parser.add_argument("--output", type=Path, default=None,
                        help="JSON results file (default: benchmarks/results/transformers[_quick].json)")
    parser.add_argument("--write-docs", nargs="?", const=DOCS, default=None, type=Path, metavar="PATH",
                        help="also write the tables and a reading of them as markdown (default path: "
                             "docs/transformers.md)")
    parser.add_argument("--from-results", type=Path, default=None, metavar="JSON",
                        help="no training: print the tables of a results file this script wrote (and "
                             "with --write-docs, write the markdown from it)")
    args = parser.parse_args(argv)
    unknown = set(args.legs.split(",")) - set(LEGS)
    if unknown:
        parser.error(f"--legs takes a subset of {','.join(LEGS)}. Unknown: {','.join(sorted(unknown))}")
    for name in ("pretrain_steps", "finetune_steps", "batch_size", "repeats"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1. Received: {value}")
    return args


def settings_for(args) -> dict:
    settings = dict(QUICK if args.quick else FULL)
    for name in ("pretrain_steps", "finetune_steps", "batch_size", "repeats"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    settings.update(lr=args.lr, finetune_lr=args.finetune_lr, seed=args.seed, quick=args.quick)
    return settings


def log(phase: str, message: str) -> None:
    print(f"[{phase}] {message}", flush=True)


# -- data ------------------------------------------------------------------------------------


def load_text(data_dir: Path) -> dict:
    """The text as character ids, its vocabulary, and the 90% / 10% train / validation split."""
    import numpy as np

    path = Path(data_dir) / "tinyshakespeare" / "input.txt"
    if not path.is_file():
        raise SystemExit(f"Tiny Shakespeare not found: {path} (pass --data-dir, the folder holding "
                         "tinyshakespeare/input.txt)")
    raw = path.read_bytes()
    text = raw.decode("utf-8")
    chars = sorted(set(text))
    lookup = {c: i for i, c in enumerate(chars)}
    ids = np.array([lookup[c] for c in text], dtype=np.int32)
    split = int(0.9 * len(ids))
    return {"chars": chars, "train": ids[:split], "val": ids[split:],
            "digest": hashlib.sha256(raw).hexdigest()[:16]}


def random_windows(ids, count: int, seq_len: int, seed: int):
    """``count`` (input, next-character target) windows at random offsets of ``ids``."""
    import numpy as np

    starts = np.random.default_rng(seed).integers(0, len(ids) - seq_len - 1, size=count)
    index = starts[:, None] + np.arange(seq_len)[None, :]
    return ids[index], ids[index + 1]


def val_windows(ids, seq_len: int, limit: int | None = None):
    """Every non-overlapping window of the validation text (the first ``limit`` of them)."""
    count = (len(ids) - 1) // seq_len
    if limit is not None:
        count = min(count, limit)
    x = ids[: count * seq_len].reshape(count, seq_len)
    y = ids[1: count * seq_len + 1].reshape(count, seq_len)
    return x, y


def as_inputs(x) -> dict:
    import numpy as np

    return {"token_ids": x, "padding_mask": np.ones_like(x)}


# -- model -----------------------------------------------------------------------------------


def build_model(vocabulary_size: int, settings: dict):
    """GPT2Backbone from its constructor, logits from the tied token embedding."""
    import keras
    import keras_hub

    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=vocabulary_size, num_layers=settings["num_layers"], num_heads=settings["num_heads"],
        hidden_dim=settings["hidden_dim"], intermediate_dim=settings["intermediate_dim"],
        max_sequence_length=settings["seq_len"], dropout=0.0,
    )
    token_ids = keras.Input((None,), dtype="int32", name="token_ids")
    padding_mask = keras.Input((None,), dtype="int32", name="padding_mask")
    hidden = backbone({"token_ids": token_ids, "padding_mask": padding_mask})
    logits = backbone.token_embedding(hidden, reverse=True)
    return keras.Model({"token_ids": token_ids, "padding_mask": padding_mask}, logits, name="gpt2_char")


def compile_model(model, learning_rate, steps: int | None = None, warmup: int = 0):
    """Adam, gradient norm clipped at 1, cosine decay to a tenth over ``steps`` (after a linear
    warm-up of ``warmup`` steps); sparse categorical cross-entropy from logits."""
    import keras

    if warmup:
        schedule = keras.optimizers.schedules.CosineDecay(
            0.0, max(steps - warmup, 1), alpha=0.1, warmup_target=learning_rate, warmup_steps=warmup)
    else:
        schedule = keras.optimizers.schedules.CosineDecay(learning_rate, max(steps, 1), alpha=0.1)
    model.compile(optimizer=keras.optimizers.Adam(schedule, clipnorm=1.0),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))


def progress_callback(phase: str, steps: int, every: int):
    """Prints the mean training loss of each ``every`` steps and the elapsed time."""
    import keras

    class Progress(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.start, self.last_step, self.last_mean = time.perf_counter(), 0, 0.0

        def on_train_batch_end(self, batch, logs=None):
            step = batch + 1
            if step % every and step != steps:
                return
            mean = float((logs or {}).get("loss", float("nan")))  # running mean since step 1
            count = step - self.last_step
            window = (step * mean - self.last_step * self.last_mean) / count
            self.last_step, self.last_mean = step, mean
            log(phase, f"step {step}/{steps}: train loss {window:.4f} (mean of the last {count} steps), "
                       f"{time.perf_counter() - self.start:.0f} s")

    return Progress()


def train(model, x, y, settings: dict, phase: str, callbacks=()) -> float:
    """One pass over the prepared windows, ``batch_size`` at a time; returns the seconds spent."""
    start = time.perf_counter()
    steps = len(x) // settings["batch_size"]
    model.fit(as_inputs(x), y, batch_size=settings["batch_size"], epochs=1, shuffle=False, verbose=0,
              callbacks=[*callbacks, progress_callback(phase, steps, settings["log_every"])])
    return time.perf_counter() - start


def val_loss(model, x, y, batch_size: int = 64) -> float:
    """Mean next-character cross-entropy in nats/char, computed exactly from the logits."""
    import numpy as np

    total, count = 0.0, 0
    for i in range(0, len(x), batch_size):
        logits = np.asarray(model.predict_on_batch(as_inputs(x[i:i + batch_size])), dtype=np.float64)
        top = logits.max(-1, keepdims=True)
        log_z = np.log(np.exp(logits - top).sum(-1)) + top[..., 0]
        picked = np.take_along_axis(logits, y[i:i + batch_size, :, None].astype(np.int64), -1)[..., 0]
        total += float((log_z - picked).sum())
        count += picked.size
    return total / count


def pretrained(data: dict, settings: dict, args) -> tuple:
    """The pretrained dense model, from the cache when it holds weights for these settings."""
    import keras

    key_fields = {k: settings[k] for k in ("num_layers", "num_heads", "hidden_dim", "intermediate_dim",
                                           "seq_len", "batch_size", "pretrain_steps", "lr", "seed")}
    key_fields.update(data=data["digest"], vocabulary=len(data["chars"]), recipe=1)
    key = hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()[:12]
    weights = Path(args.cache_dir) / f"gpt2_char_{key}.weights.h5"
    info_path = weights.with_name(f"gpt2_char_{key}.json")
    keras.utils.set_random_seed(settings["seed"])
    model = build_model(len(data["chars"]), settings)
    if weights.is_file() and info_path.is_file() and not args.retrain:
        model.load_weights(weights)
        info = json.loads(info_path.read_text())
        log("pretrain", f"loaded the cached dense model {weights.name} (trained {info['seconds']:.0f} s, "
                        f"validation loss {info['val_loss']:.4f} nats/char)")
        return model, {**info, "cached": True}
    steps = settings["pretrain_steps"]
    x, y = random_windows(data["train"], steps * settings["batch_size"], settings["seq_len"], settings["seed"])
    compile_model(model, settings["lr"], steps, warmup=max(1, steps // 20))
    log("pretrain", f"{steps} steps of {settings['batch_size']} x {settings['seq_len']} characters, "
                    f"{model.count_params():,} parameters")
    seconds = train(model, x, y, settings, "pretrain")
    info = {"seconds": seconds, "steps": steps, "settings": key_fields}
    info["val_loss"] = val_loss(model, *data["val_xy"])
    Path(args.cache_dir).mkdir(parents=True, exist_ok=True)
    tmp = weights.with_name(f".tmp-{os.getpid()}-{weights.name}")
    try:
        model.save_weights(tmp)
        os.replace(tmp, weights)
    finally:
        if tmp.exists():
            tmp.unlink()  # our own temporary file, left only by a failed save
    info_path.write_text(json.dumps(info, indent=2) + "\n")
    log("pretrain", f"done in {seconds:.0f} s: validation loss {info['val_loss']:.4f} nats/char; "
                    f"cached as {weights}")
    return model, {**info, "cached": False}


def fresh_copy(dense, data: dict, settings: dict):
    """A new model with the pretrained weights (each leg starts from the same point)."""
    copy = build_model(len(data["chars"]), settings)
    copy.set_weights(dense.get_weights())
    return copy


# -- what the pruned models hold ---------------------------------------------------------------


def block_kernels(model) -> list:
    """(path, array) of every kernel inside the transformer blocks of ``model``."""
    import keras

    out = []
    for variable in model.weights:
        path = getattr(variable, "path", variable.name)
        if "transformer_layer" in path and path.rsplit("/", 1)[-1] == "kernel":
            out.append((path, keras.ops.convert_to_numpy(variable)))
    return out


def input_major(path: str, kernel):
    """A block kernel as a 2-D (input, output) matrix: the rows are the axes the layer sums
    over. Query, key and value kernels are (width, heads, head size): one input axis; the
    attention output kernel is (heads, head size, width): two; a Dense kernel: one."""
    lead = 2 if path.endswith("attention_output/kernel") else 1
    return kernel.reshape(int(math.prod(kernel.shape[:lead])), -1)


def two_of_four_axes(kernel) -> list[int]:
    """The axes of ``kernel`` along which every group of 4 consecutive weights holds >= 2 zeros."""
    import numpy as np

    axes = []
    for axis, size in enumerate(kernel.shape):
        if size % 4 == 0:
            zeros = np.moveaxis(kernel == 0, axis, 0).reshape(size // 4, 4, -1).sum(1)
            if (zeros >= 2).all():
                axes.append(axis)
    return axes


def block_sparsity(model) -> dict:
    """Zeros among the transformer blocks' kernels; the share of groups of 4 consecutive weights
    along each kernel's input axis holding at least two zeros (all of them under 2:4); and the
    zeros among the token and position embeddings (left dense on purpose)."""
    import keras

    kernels = block_kernels(model)
    zeros = sum(int((k == 0).sum()) for _, k in kernels)
    total = sum(k.size for _, k in kernels)
    groups = ok = 0
    per_kernel, elsewhere = {}, {}
    for path, kernel in kernels:
        matrix = input_major(path, kernel)
        if matrix.shape[0] % 4 == 0:
            counts = (matrix == 0).reshape(matrix.shape[0] // 4, 4, matrix.shape[1]).sum(1)
            groups += counts.size
            ok += int((counts >= 2).sum())
            per_kernel[path] = float((counts >= 2).mean())
            if per_kernel[path] < 1:
                elsewhere[path] = {"shape": list(kernel.shape), "axes": two_of_four_axes(kernel)}
    embeddings = [keras.ops.convert_to_numpy(v) for v in model.weights
                  if getattr(v, "path", v.name).rsplit("/", 1)[-1] == "embeddings"]
    embedding_zeros = sum(int((e == 0).sum()) for e in embeddings)
    return {"sparsity": zeros / total if total else float("nan"), "kernels": len(kernels),
            "kernel_weights": total, "two_of_four_groups": ok / groups if groups else float("nan"),
            "two_of_four_by_kernel": per_kernel, "two_of_four_other_axes": elsewhere,
            "embedding_sparsity": embedding_zeros / max(1, sum(e.size for e in embeddings))}


def nonzero_params(model) -> int:
    import keras

    return int(sum((keras.ops.convert_to_numpy(w) != 0).sum() for w in model.weights))


def shape_summary(model) -> dict:
    """Attention heads and feed-forward units of the first block (after any shrinking)."""
    heads = units = None
    for path, kernel in block_kernels(model):
        if path.endswith("query/kernel") and heads is None:
            heads = int(kernel.shape[1]) if kernel.ndim == 3 else None
        if "intermediate_dense" in path and units is None:
            units = int(kernel.shape[-1])
    return {"heads": heads, "ffn_units": units}


# -- fine-tuning legs --------------------------------------------------------------------------


def in_blocks(layer) -> bool:
    """The layers to prune: all but the token and position embeddings (the token embedding is
    also the output layer), which leaves the transformer blocks' projections."""
    import keras
    import keras_hub

    return not isinstance(layer, (keras.layers.Embedding, keras_hub.layers.PositionEmbedding))


def plan_summary(dense) -> list[str]:
    """What prune_channels(dense, 0.5) removes and keeps, in the planner's words."""
    try:
        from keras_prune.structured import plan_channels

        return plan_channels(dense, 0.5).summary().splitlines()
    except Exception as error:  # only reported
        return [f"(no plan summary: {error_text(error)})"]


def finetune_leg(name: str, dense, data: dict, settings: dict) -> dict:
    """Fine-tunes a copy of the pretrained model as leg ``name``; returns its measurements."""
    import keras

    steps = settings["finetune_steps"]
    x, y = data["finetune_xy"]
    keras.utils.set_random_seed(settings["seed"] + 1)
    result = {}
    if name != "dense":
        import keras_prune
    if name == "structured_50":
        model = keras_prune.prune_channels(dense, 0.5)
        result["plan"] = plan_summary(dense)
        for line in result["plan"]:
            log(name, f"plan: {line}")
        result["val_loss_before_finetune"] = val_loss(model, *data["val_xy"])
        shape = shape_summary(model)
        log(name, f"shrunk to {model.count_params():,} parameters ({shape['heads']} heads, "
                  f"{shape['ffn_units']} FFN units per block); validation loss "
                  f"before fine-tuning {result['val_loss_before_finetune']:.4f}")
        callbacks = []
    elif name == "dense":
        model = fresh_copy(dense, data, settings)
        callbacks = []
    else:
        if name == "2:4":
            schedule = keras_prune.ConstantSparsity(0.5, 0, frequency=settings["frequency"])
            kwargs = {"sparsity_m_by_n": (2, 4)}
        else:
            target = int(name.rsplit("_", 1)[1]) / 100
            end = max(settings["frequency"], (2 * steps // 3) // settings["frequency"] * settings["frequency"])
            schedule = keras_prune.PolynomialDecay(0.0, target, 0, end, frequency=settings["frequency"])
            kwargs = {}
        model = keras_prune.prune_low_magnitude(fresh_copy(dense, data, settings), schedule,
                                                layers=in_blocks, **kwargs)
        callbacks = [keras_prune.UpdatePruningStep()]
    compile_model(model, settings["finetune_lr"], steps)
    result["finetune_seconds"] = train(model, x, y, settings, name, callbacks)
    if callbacks:
        model = keras_prune.strip_pruning(model)
    result.update(val_loss=val_loss(model, *data["val_xy"]), params=model.count_params(),
                  nonzero_params=nonzero_params(model), **block_sparsity(model), **shape_summary(model))
    log(name, f"validation loss {result['val_loss']:.4f} nats/char, block-kernel sparsity "
              f"{result['sparsity']:.4f}, {result['finetune_seconds']:.0f} s")
    return {"result": result, "model": model}


def error_text(error: BaseException) -> str:
    """One line: the exception's type and first line, with repository paths made relative."""
    message = str(error).replace(f"{ROOT}{os.sep}", "").strip()
    first = message.splitlines()[0] if message else ""
    text = f"{type(error).__name__}: {first}" if first else type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


# -- latency ---------------------------------------------------------------------------------


def fixed_length(model, seq_len: int):
    """``model`` behind a single input of ``seq_len`` token ids (no padding), as served."""
    import keras

    class FullMask(keras.layers.Layer):
        def call(self, token_ids):
            return keras.ops.ones_like(token_ids)

    token_ids = keras.Input((seq_len,), dtype="int32", name="token_ids")
    logits = model({"token_ids": token_ids, "padding_mask": FullMask()(token_ids)})
    return keras.Model(token_ids, logits, name=f"{model.name}_fixed")


def latency(dense, shrunk, settings: dict) -> dict:
    """Dense vs shrunk median milliseconds at each batch size, interleaved, in each runtime."""
    from keras_prune.analysis.latency import compare_latency

    models = [fixed_length(dense, settings["seq_len"]), fixed_length(shrunk, settings["seq_len"])]
    out = {}
    for runtime in RUNTIMES:
        for batch in LATENCY_BATCHES:
            ms = compare_latency(models, batch, repeats=settings["repeats"], runtime=runtime)
            out[f"{runtime}_batch{batch}"] = {"runtime": runtime, "batch": batch, "dense_ms": ms[0],
                                              "shrunk_ms": ms[1], "speedup": ms[0] / ms[1]}
            log("latency", f"{RUNTIMES[runtime]}, batch {batch}: dense {ms[0]:.2f} ms, shrunk {ms[1]:.2f} ms, "
                           f"{ms[0] / ms[1]:.2f}x")
    return out


# -- tables ----------------------------------------------------------------------------------


def fmt(value, spec: str, default: str = "-") -> str:
    return default if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def targets(results: dict) -> list[dict]:
    legs, control = results["legs"], results["legs"].get("dense", {}).get("val_loss")
    rows = []
    for key, (text, threshold) in TARGETS.items():
        leg = legs.get(key)
        if key == "structured_50":
            lat = results.get("latency", {}).get("litert_batch1")
            measured = lat["speedup"] if lat else None
            passed = measured is not None and measured >= threshold
            shown = f"{measured:.2f}x" if measured is not None else None
        else:
            measured = leg["val_loss"] - control if leg and "val_loss" in leg and control is not None else None
            passed = measured is not None and measured <= threshold
            shown = f"{measured:+.4f}" if measured is not None else None
        if shown is None:
            why = (leg or {}).get("error") or results.get("latency_error") or results["legs"].get("dense", {}).get(
                "error") or "not run"
            verdict = f"FAIL (not measured: {why})"
        else:
            verdict = "PASS" if passed else "FAIL"
        rows.append({"target": text, "measured": shown or "-", "passed": passed, "verdict": verdict})
    return rows


def shape_cell(row: dict) -> str:
    return f"{fmt(row.get('heads'), 'd')} / {fmt(row.get('ffn_units'), 'd')}"


def tables(results: dict) -> str:
    """Markdown: the legs, the latency and the targets."""
    control = results["legs"].get("dense", {}).get("val_loss")
    out = ["| leg | heads / FFN units per block | parameters | non-zero | block-kernel sparsity | "
           "4-groups with >= 2 zeros | val loss (nats/char) | vs dense control | fine-tuning s |",
           "|---|---|---|---|---|---|---|---|---|"]
    pre = results["pretrain"]
    out.append(f"| {LABELS['pretrained']} | {shape_cell(pre)} | {fmt(pre.get('params'), ',')} | {fmt(pre.get('nonzero_params'), ',')} "
               f"| {fmt(pre.get('sparsity'), '.1%')} | {fmt(pre.get('two_of_four_groups'), '.1%')} | "
               f"{fmt(pre.get('val_loss'), '.4f')} | "
               f"{fmt(None if control is None else pre['val_loss'] - control, '+.4f')} | - |")
    for name in LEGS:
        leg = results["legs"].get(name)
        if name == "structured_50" and leg and "val_loss_before_finetune" in leg:
            before = leg["val_loss_before_finetune"]
            out.append(f"| {LABELS['structured_oneshot']} | {shape_cell(leg)} | {fmt(leg.get('params'), ',')} "
                       "| - | - | - | "
                       f"{before:.4f} | {fmt(None if control is None else before - control, '+.4f')} | - |")
        if leg is None:
            out.append(f"| {LABELS[name]} | not run | | | | | | | |")
        elif "val_loss" not in leg:
            out.append(f"| {LABELS[name]} | FAILED: {leg.get('error', '?').replace('|', '/')} | | | | | | | |")
        else:
            delta = None if control is None else leg["val_loss"] - control
            out.append(f"| {LABELS[name]} | {shape_cell(leg)} | {leg['params']:,} | {leg['nonzero_params']:,} | "
                       f"{fmt(leg['sparsity'], '.1%')} | {fmt(leg['two_of_four_groups'], '.1%')} | "
                       f"{leg['val_loss']:.4f} | {'0 (control)' if name == 'dense' else fmt(delta, '+.4f')} | "
                       f"{leg['finetune_seconds']:.0f} |")
    out += ["", "| runtime | batch | dense ms | structured 50% ms | speedup |", "|---|---|---|---|---|"]
    latency_rows = results.get("latency", {})
    for runtime, label in RUNTIMES.items():
        for batch in LATENCY_BATCHES:
            row = latency_rows.get(f"{runtime}_batch{batch}")
            if row is None:
                why = results.get("latency_error", "not run").replace("|", "/")
                out.append(f"| {label} | {batch} | FAILED: {why} | | |")
            else:
                out.append(f"| {label} | {batch} | {row['dense_ms']:.2f} | {row['shrunk_ms']:.2f} | "
                           f"{row['speedup']:.2f}x |")
    out += ["", "| target | measured | result |", "|---|---|---|"]
    for row in targets(results):
        out.append(f"| {row['target']} | {row['measured']} | {row['verdict'].replace('|', '/')} |")
    return "\n".join(out)


def reading(results: dict) -> str:
    """A few sentences read off the numbers."""
    legs, control = results["legs"], results["legs"].get("dense", {}).get("val_loss")
    lines = []
    if control is not None:
        gain = results["pretrain"]["val_loss"] - control
        lines.append(f"The dense control ends at {control:.4f} nats/char, {gain:.4f} below the pretrained model "
                     f"({results['pretrain']['val_loss']:.4f})"
                     + (": the pretrained model had not converged, so the control keeps learning while the "
                        "pruned legs spend part of the same steps recovering." if gain > 0.005 else "."))
        costs = []
        for name in LEGS[1:]:
            leg = legs.get(name, {})
            if "val_loss" in leg:
                costs.append(f"{LABELS[name]} {leg['val_loss'] - control:+.4f}"
                             + (f" at {leg['sparsity']:.1%} block-kernel sparsity" if name != "structured_50" else
                                f" with {leg['params']:,} of {results['pretrain']['params']:,} parameters"))
        if costs:
            lines.append("Cost of each leg in validation loss against that control: " + "; ".join(costs) + ".")
    pruned = [legs[n] for n in LEGS[1:5] if "val_loss" in legs.get(n, {})]
    if pruned:
        worst = max(leg["embedding_sparsity"] for leg in pruned)
        lines.append("The embeddings stayed dense in the magnitude-pruned legs" if worst < 0.01 else
                     f"The embeddings lost up to {worst:.1%} of their weights in the magnitude-pruned legs")
        lines[-1] += "."
    if "val_loss" in legs.get("2:4", {}):
        leg = legs["2:4"]
        off = sorted({path.rsplit("/", 2)[-2] for path, share in leg["two_of_four_by_kernel"].items() if share < 1})
        if not off:
            lines.append("In the 2:4 leg every group of 4 consecutive weights along the input axis of every block "
                         "kernel holds at least two zeros: the pattern holds.")
        else:
            lines.append(f"In the 2:4 leg only {leg['two_of_four_groups']:.1%} of the groups of 4 consecutive "
                         "weights along the input axis hold at least two zeros: the zeros of the "
                         f"{', '.join(off)} kernels do not form 2:4 groups along their input axis (the axis "
                         "their layer sums over), so this leg is 50% sparse but not 2:4 in the "
                         "hardware sense for those kernels.")
            other = leg.get("two_of_four_other_axes", {})
            found = sorted({f"axis {axis} of their {tuple(entry['shape'])} kernels"
                            for entry in other.values() for axis in entry["axes"]})
            if found and all(entry["axes"] for entry in other.values()):
                lines[-1] += " Their groups of 4 with two zeros run along " + " and ".join(found) + " instead."
    failed = [LABELS[n] for n in LEGS if n in legs and "val_loss" not in legs[n]]
    if failed:
        lines.append("Legs that failed (see the table for the reason): " + ", ".join(failed) + ".")
    lat = results.get("latency", {})
    if lat:
        pre, leg = results["pretrain"], legs.get("structured_50", {})
        parts = ", ".join(f"{RUNTIMES[r['runtime']]} batch {r['batch']} {r['speedup']:.2f}x" for r in lat.values())
        if "val_loss" in leg:
            shrink = (f"The structured leg keeps {leg['heads']} of {pre['heads']} attention heads and "
                      f"{leg['ffn_units']} of {pre['ffn_units']} feed-forward units per block "
                      f"({leg['params']:,} parameters)")
            if leg["heads"] == pre["heads"]:
                shrink += ": no attention head was removed"
            lines.append(shrink + "; the width of the residual stream, the embeddings, the layer norms and the "
                                  f"projection onto the vocabulary stay. Dense over shrunk latency: {parts}.")
        else:
            lines.append(f"Dense over shrunk latency (the shrunk model not fine-tuned): {parts}.")
    verdicts = targets(results)
    lines.append("Targets: " + "; ".join(f"{row['target']}: {row['verdict']}" for row in verdicts) + ".")
    return "\n".join(f"* {line}" for line in lines)


def command_line(args) -> str:
    names = ("pretrain_steps", "finetune_steps", "batch_size", "repeats", "lr", "finetune_lr", "seed", "legs")
    return rerun_command("bench_transformers.py", args, parse_args([]), names)


def rerun_command(script: str, args, defaults, names) -> str:
    """The command that reruns a benchmark as ``args`` ran it: the flags among ``names`` that
    differ from ``defaults``, and ``--write-docs``."""
    parts = [f".venv/bin/python benchmarks/{script}"] + (["--quick"] if args.quick else [])
    for name in names:
        if getattr(args, name) != getattr(defaults, name):
            parts.append(f"--{name.replace('_', '-')} {getattr(args, name)}")
    return " ".join([*parts, "--write-docs"])


def timing(results: dict) -> str:
    pre = results["pretrain"]
    text = f"Wall time of this run {results['total_seconds'] / 60:.1f} min"
    if pre.get("cached"):
        return text + (f", the pretraining ({pre['seconds'] / 60:.1f} min) coming from the cache of an "
                       "earlier run.")
    return text + f", of which pretraining {pre['seconds'] / 60:.1f} min."


def markdown(results: dict, args) -> str:
    s = results["settings"]
    env = results["environment"]
    plan = "\n".join(results["legs"].get("structured_50", {}).get("plan", ["(the structured leg did not run)"]))
    return f"""# Pruning a transformer: a character-level GPT-2 on Tiny Shakespeare

`benchmarks/bench_transformers.py` pretrains a small GPT-2 on characters, then fine-tunes it
in several legs that all start from the same pretrained weights and train for the same number
of steps on the same batches with the same optimizer: a dense control, gradual unstructured
magnitude pruning to 50%, 75% and 90%, 2:4 semi-structured pruning, and structured pruning
that removes half of the attention heads and feed-forward units. It reports each leg's
validation loss against the dense control, the sparsity actually reached inside the
transformer blocks, and the CPU latency of the structurally shrunk model against the dense one.

```
{results.get("command") or command_line(args)}
```

## Setup

* Data: Tiny Shakespeare (1.1M characters, {s['vocabulary']} distinct), first 90% for training,
  last 10% for validation. Validation loss is the mean next-character cross-entropy in
  nats/char over all {s['val_windows_used']} non-overlapping {s['seq_len']}-character windows of the
  validation text (early positions of a window see little context, so this reads higher than a
  sliding-window evaluation would; it is the same measure for every leg).
* Model: `keras_hub.models.GPT2Backbone` built from its constructor ({s['num_layers']} layers,
  {s['num_heads']} heads, width {s['hidden_dim']}, feed-forward {s['intermediate_dim']}, context
  {s['seq_len']}, no dropout), logits from the tied token embedding, {results['pretrain']['params']:,}
  parameters.
* Pretraining: {s['pretrain_steps']} steps of {s['batch_size']} random windows, Adam (peak learning rate
  {s['lr']:g}, 5% linear warm-up, cosine decay to a tenth, gradient norm clipped at 1).
* Fine-tuning, every leg: {s['finetune_steps']} steps of {s['batch_size']} windows (the same windows for
  every leg), Adam at {s['finetune_lr']:g} with cosine decay to a tenth, clipped at 1.
  * unstructured: `prune_low_magnitude(model, PolynomialDecay(0.0, s, 0, {s['prune_end_step']},
    frequency={s['frequency']}), layers=...)` choosing every layer but the token and position
    embeddings (the token embedding is also the output layer), trained with
    `UpdatePruningStep()`, then `strip_pruning`;
  * 2:4: the same with `ConstantSparsity(0.5, 0)` and `sparsity_m_by_n=(2, 4)`;
  * structured: `prune_channels(model, 0.5)` on the pretrained model (L1 importance), then the
    smaller dense model is fine-tuned.
* Block-kernel sparsity: zeros among the kernels of the transformer blocks (query, key, value,
  attention output, both feed-forward layers), counted on the stripped model. "4-groups with
  >= 2 zeros": of the groups of 4 consecutive weights along each kernel's input axis (the axis
  its layer sums over: the width for query, key, value and the first feed-forward layer; heads
  x head size for the attention output; the feed-forward units for the second feed-forward
  layer), the share holding at least two zeros: 100% means the 2:4 pattern holds.
* Latency: the dense and the structurally shrunk model behind a single input of
  {s['seq_len']} token ids, median of {s['repeats']} interleaved rounds, in TensorFlow (a compiled
  `tf.function`) and in LiteRT's interpreter (plain float32 conversion).
* One seed ({s['seed']}); every leg sees the same batches in the same order.
* Machine: {env['cpus']} CPU cores ({env['machine']}) shared with other work (load average
  {env['load_average'][0]:.1f} at the start), Keras {env['keras']}, keras-hub {env['keras_hub']},
  TensorFlow {env['tensorflow']}. {timing(results)}

## Results

{tables(results)}

What `prune_channels(model, 0.5)` removed (the planner's summary):

```
{plan}
```

## Reading

{reading(results)}

The numbers are also written to `{results.get("output", "benchmarks/results/transformers.json")}`.
"""


# -- main ------------------------------------------------------------------------------------


def environment() -> dict:
    import keras

    versions = {"keras": keras.__version__, "backend": keras.backend.backend()}
    for name in ("keras_hub", "tensorflow"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:  # only reported
            versions[name] = "?"
    return {**versions, "python": platform.python_version(), "cpus": os.cpu_count(),
            "machine": platform.machine(), "load_average": list(os.getloadavg())}


def import_library() -> None:
    """Imports every keras_prune module now, so that the whole run uses one version of the
    library even if its files change while the benchmark runs; a module that fails to import
    is left to fail (and be reported) in the leg that needs it."""
    import importlib
    import pkgutil

    try:
        import keras_prune
    except Exception as error:  # reported by the legs that need it
        log("setup", f"keras_prune does not import: {error_text(error)}")
        return
    for module in pkgutil.walk_packages(keras_prune.__path__, "keras_prune."):
        if not module.name.startswith(("keras_prune.cli", "keras_prune.compat.tfmot")):
            try:
                importlib.import_module(module.name)
            except Exception:  # the leg that needs it reports it
                pass


def write_docs(results: dict, args) -> None:
    if args.write_docs:
        Path(args.write_docs).parent.mkdir(parents=True, exist_ok=True)
        Path(args.write_docs).write_text(markdown(results, args))
        print(f"wrote {args.write_docs}")


def main(argv=None) -> dict:
    """Runs the benchmark; returns the results (with the markdown tables under ``"table"``)."""
    args = parse_args(argv)
    if args.from_results:
        results = json.loads(args.from_results.read_text())
        results["table"] = tables(results)
        print(results["table"])
        write_docs(results, args)
        return results
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    start = time.perf_counter()
    settings = settings_for(args)
    data = load_text(args.data_dir)
    seq_len = settings["seq_len"]
    data["val_xy"] = val_windows(data["val"], seq_len, settings["val_windows"])
    data["finetune_xy"] = random_windows(data["train"], settings["finetune_steps"] * settings["batch_size"],
                                         seq_len, settings["seed"] + 1)
    settings.update(vocabulary=len(data["chars"]), val_windows_used=len(data["val_xy"][0]),
                    prune_end_step=max(settings["frequency"], (2 * settings["finetune_steps"] // 3)
                                       // settings["frequency"] * settings["frequency"]))
    log("data", f"{len(data['train']):,} training and {len(data['val']):,} validation characters, "
                f"{len(data['chars'])} distinct; {settings['val_windows_used']} validation windows of {seq_len}")

    import_library()
    dense, info = pretrained(data, settings, args)
    results = {"settings": settings, "environment": environment(), "legs": {}, "command": command_line(args)}
    results["pretrain"] = {**info, "params": dense.count_params(), "nonzero_params": nonzero_params(dense),
                           **block_sparsity(dense), **shape_summary(dense)}
    models = {}
    for name in args.legs.split(","):
        log(name, f"fine-tuning for {settings['finetune_steps']} steps")
        try:
            leg = finetune_leg(name, dense, data, settings)
        except Exception as error:  # one failed leg must not stop the others
            traceback.print_exc(file=sys.stderr)
            results["legs"][name] = {"error": error_text(error)}
            log(name, f"FAILED: {error_text(error)}")
            continue
        results["legs"][name] = leg["result"]
        models[name] = leg["model"]

    log("latency", "dense vs structured 50%, interleaved")
    try:
        import keras_prune

        shrunk = models.get("structured_50") or keras_prune.prune_channels(dense, 0.5)
        results["latency"] = latency(dense, shrunk, settings)
    except Exception as error:  # reported in the table
        traceback.print_exc(file=sys.stderr)
        results["latency_error"] = error_text(error)
        log("latency", f"FAILED: {results['latency_error']}")

    results["total_seconds"] = time.perf_counter() - start
    results["targets"] = targets(results)
    results["table"] = tables(results)
    print()
    print(results["table"])
    output = args.output or RESULTS / f"transformers{'_quick' if args.quick else ''}.json"
    return save_results(results, output, lambda: write_docs(results, args))


def save_results(results: dict, output: Path, write_docs, default=str) -> dict:
    """Writes ``results`` as JSON to ``output`` (recording where), then the docs; returns them."""
    output.parent.mkdir(parents=True, exist_ok=True)
    where = output.resolve()
    results["output"] = str(where.relative_to(ROOT) if where.is_relative_to(ROOT) else where.name)
    output.write_text(json.dumps(results, indent=2, default=default) + "\n")
    print(f"wrote {output}")
    write_docs()
    print(f"total {results['total_seconds'] / 60:.1f} min")
    return results


if __name__ == "__main__":
    main()
