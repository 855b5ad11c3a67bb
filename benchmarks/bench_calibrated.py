"""Calibrated one-shot pruning (SparseGPT, Wanda) against magnitude pruning, side by side in one run.

No training after pruning anywhere: every leg prunes a fresh copy of the same trained dense
weights once with `keras_prune.oneshot_prune` and is measured as it is.

1. A character-level GPT-2 on Tiny Shakespeare (the pretrained dense model of
   bench_transformers.py, reused from its cache): validation loss dense and at 50% unstructured,
   2:4 and 4:8 sparsity for magnitude, Wanda and SparseGPT, with 128 calibration windows of 128
   characters from the training text, pruning the kernels of the transformer blocks only
   (`layers="transformer_layer"`).
2. A LeNet-5-style CNN on MNIST (trained exactly as bench_oneshot.py trains it) and the
   ResNet-style CNN of bench_structured.py on CIFAR-10: test accuracy at 50-95% sparsity for
   magnitude and SparseGPT, each with layer and with global scope, 256 calibration images from
   the training set. The trained dense weights are cached under benchmarks/.cache/calibrated.
3. Speed: SparseGPT (50%) against Keras' own GPTQ (`model.quantize("gptq")`, 4 bits, groups of
   128) on the same model and the same calibration samples: the char GPT-2 and a stack of 10
   Dense layers of 3162 x 3162 (100M parameters, random normal weights, 128 random inputs).
   Each of the four runs has a process of its own, one after the other, so that each has its
   own peak memory (the kernel's high-water mark of resident memory, reset just before the call).

    .venv/bin/python benchmarks/bench_calibrated.py --quick               # smoke run, a few minutes
    .venv/bin/python benchmarks/bench_calibrated.py --write-docs          # full run, ~1 h on 2 cores
    .venv/bin/python benchmarks/bench_calibrated.py --parts cnn           # some parts only

Prints the tables and the targets (PASS/FAIL), writes benchmarks/results/calibrated.json, the
accuracy-vs-sparsity plot docs/img/calibrated_cnn.png (--quick: both in a temporary folder) and,
with --write-docs, the results section of docs/oneshot.md (between its calibrated markers) and
the README's line on it.
A leg that fails is reported as failed (with the reason) and the other legs still run.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import math
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "benchmarks"
RESULTS = HERE / "results"
CACHE = HERE / ".cache"
DOCS = ROOT / "docs" / "oneshot.md"
README = ROOT / "README.md"
PLOT = ROOT / "docs" / "img" / "calibrated_cnn.png"
BEGIN, END = "<!-- calibrated:begin -->", "<!-- calibrated:end -->"

PARTS = ("gpt2", "cnn", "speed")
GPT2_METHODS = ("magnitude", "wanda", "sparsegpt")
PATTERNS = {"50%": {"sparsity": 0.5}, "2:4": {"sparsity_m_by_n": (2, 4)}, "4:8": {"sparsity_m_by_n": (4, 8)}}
CNN_LEGS = (("magnitude", "layer"), ("magnitude", "global"), ("sparsegpt", "layer"), ("sparsegpt", "global"))
# Beyond the specified legs, on LeNet-5 only: global SparseGPT with more calibration images (its first
# Dense layer has 400 inputs, more than the 256 images give rows).
EXTRA_MODELS = ("lenet5",)
CNN_MODELS = {"lenet5": "LeNet-5-style CNN, MNIST", "resnet": "ResNet-style CNN, CIFAR-10"}
SPEED_MODELS = {"gpt2": "char GPT-2", "stack": "Dense stack"}
SPEED_METHODS = {"sparsegpt": "keras-prune SparseGPT, 50%", "gptq": "Keras GPTQ, 4-bit"}

FULL = {"gpt2_samples": 128, "cnn_samples": 256, "cnn_extra_samples": 1024,
        "sparsities": (0.5, 0.6, 0.7, 0.8, 0.9, 0.95),
        "lenet_epochs": 4, "lenet_train": 55000, "cifar_epochs": 4, "cifar_train": 50000, "cifar_width": 32,
        "test_images": None, "stack_layers": 10, "stack_width": 3162, "stack_samples": 128,
        "gptq_bits": 4, "gptq_group": 128, "damping": 0.01}
QUICK = {"gpt2_samples": 16, "cnn_samples": 64, "cnn_extra_samples": 128, "sparsities": (0.5, 0.8, 0.9),
         "lenet_epochs": 1, "lenet_train": 6000, "cifar_epochs": 1, "cifar_train": 2000, "cifar_width": 16,
         "test_images": 2000, "stack_layers": 3, "stack_width": 256, "stack_samples": 16,
         "gptq_bits": 4, "gptq_group": 128, "damping": 0.01}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data",
                        help="folder holding mnist/, cifar10-jpg/ and tinyshakespeare/ (default: ../shared/data "
                             "relative to the repository root)")
    parser.add_argument("--cache-dir", type=Path, default=CACHE,
                        help="trained dense weights kept between runs: transformers/ (bench_transformers.py's "
                             "pretrained GPT-2) and calibrated/ (the CNNs) (default: benchmarks/.cache)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run, a few minutes: tiny models, data and step counts; the numbers mean nothing")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated parts to run (default: all of {','.join(PARTS)})")
    parser.add_argument("--cifar-epochs", type=int, default=None, help="ResNet-style training epochs (4)")
    parser.add_argument("--cifar-train", type=int, default=None, help="CIFAR-10 training images used (all 50000)")
    parser.add_argument("--speed-repeats", type=int, default=1,
                        help="runs of each speed measurement, alternating SparseGPT and GPTQ; the median is "
                             "reported (1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None,
                        help="JSON results file (default: benchmarks/results/calibrated.json; with --quick, "
                             "calibrated.json in a bench_calibrated_quick folder of the temporary directory)")
    parser.add_argument("--plot", type=Path, default=None,
                        help="accuracy-vs-sparsity plot (default: docs/img/calibrated_cnn.png; with --quick, "
                             "next to the JSON file)")
    parser.add_argument("--write-docs", nargs="?", const=DOCS, default=None, type=Path, metavar="PATH",
                        help="also write the results section between the calibrated markers of PATH (default: "
                             "docs/oneshot.md; the markers are appended if missing) and, unless --quick or "
                             "PATH is not the default, the README's results line")
    parser.add_argument("--from-results", type=Path, default=None, metavar="JSON",
                        help="no measuring: print the tables of a results file this script wrote (and with "
                             "--write-docs, write the markdown from it)")
    parser.add_argument("--speed-worker", default=None, help=argparse.SUPPRESS)  # MODEL:METHOD, internal
    parser.add_argument("--worker-output", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = set(args.parts.split(",")) - set(PARTS)
    if unknown:
        parser.error(f"--parts takes a subset of {','.join(PARTS)}. Unknown: {','.join(sorted(unknown))}")
    for name in ("cifar_epochs", "cifar_train", "speed_repeats"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1. Received: {value}")
    return args


def settings_for(args) -> dict:
    settings = dict(QUICK if args.quick else FULL)
    for name in ("cifar_epochs", "cifar_train"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    settings.update(seed=args.seed, quick=args.quick, speed_repeats=args.speed_repeats)
    return settings


def log(phase: str, message: str) -> None:
    print(f"[{phase}] {message}", flush=True)


def sibling(name: str):
    """Another benchmark script of this folder, imported as a module (their imports are lazy)."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    return importlib.import_module(name)


def error_text(error: BaseException) -> str:
    """One line: the exception's type and first line, with repository paths made relative."""
    message = str(error).replace(f"{ROOT}{os.sep}", "").strip()
    first = message.splitlines()[0] if message else ""
    text = f"{type(error).__name__}: {first}" if first else type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def oneshot_prune(*args, **kwargs):
    """keras_prune.oneshot_prune (looked up at call time)."""
    import keras_prune

    return keras_prune.oneshot_prune(*args, **kwargs)


def report_fields(report) -> dict:
    """What a PruningReport says about itself: its total sparsity, warnings and settings."""
    totals = getattr(report, "totals", {}) or {}
    settings = getattr(report, "settings", {}) or {}
    return {"reported_sparsity": totals.get("sparsity"),
            "warnings": [str(w) for w in (getattr(report, "warnings", None) or [])],
            "settings": {k: v for k, v in settings.items() if isinstance(v, (str, int, float, bool, type(None)))}}


def cached_weights(cache_dir: Path, stem: str, key_fields: dict, build, train) -> tuple:
    """The model ``build()`` returns, with weights from the cache when it holds some for
    ``key_fields``; otherwise ``train(model)`` (returning its seconds) runs and its weights are
    cached. Returns (model, info)."""
    key = hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()[:12]
    weights = Path(cache_dir) / "calibrated" / f"{stem}_{key}.weights.h5"
    info_path = weights.with_name(f"{stem}_{key}.json")
    model = build()
    if weights.is_file() and info_path.is_file():
        model.load_weights(weights)
        info = json.loads(info_path.read_text())
        log(stem, f"loaded the cached dense model {weights.name} (trained {info['seconds']:.0f} s)")
        return model, {**info, "cached": True}
    seconds = train(model)
    weights.parent.mkdir(parents=True, exist_ok=True)
    tmp = weights.with_name(f".tmp-{os.getpid()}-{weights.name}")
    try:
        model.save_weights(tmp)
        os.replace(tmp, weights)
    finally:
        if tmp.exists():
            tmp.unlink()  # our own temporary file, left only by a failed save
    info = {"seconds": seconds, "settings": key_fields}
    info_path.write_text(json.dumps(info, indent=2) + "\n")
    log(stem, f"trained in {seconds:.0f} s; cached as {weights}")
    return model, {**info, "cached": False}


def digest(*arrays) -> str:
    h = hashlib.sha256()
    for array in arrays:
        h.update(array.tobytes())
    return h.hexdigest()[:16]


# -- part 1: the char GPT-2 ------------------------------------------------------------------


def gpt2_setup(args) -> dict:
    """bench_transformers' data, settings and pretrained dense model (from its cache), and the
    calibration windows: random 128-character windows of the training text."""
    bt = sibling("bench_transformers")
    targs = bt.parse_args(["--data-dir", str(args.data_dir), "--cache-dir", str(Path(args.cache_dir) / "transformers")]
                          + (["--quick"] if args.quick else []))
    tsettings = bt.settings_for(targs)
    data = bt.load_text(targs.data_dir)
    data["val_xy"] = bt.val_windows(data["val"], tsettings["seq_len"], tsettings["val_windows"])
    dense, info = bt.pretrained(data, tsettings, targs)
    count = (QUICK if args.quick else FULL)["gpt2_samples"]
    x, _ = bt.random_windows(data["train"], count, tsettings["seq_len"], args.seed + 2)
    return {"bt": bt, "settings": tsettings, "data": data, "dense": dense, "info": info, "calibration": x}


def m_by_n_share(bt, model, m: int, n: int) -> float:
    """Share of the groups of ``n`` consecutive weights along each block kernel's input axis
    that hold at least ``m`` zeros (1.0 when the M:N pattern holds everywhere)."""
    groups = ok = 0
    for path, kernel in bt.block_kernels(model):
        matrix = bt.input_major(path, kernel)
        if matrix.shape[0] % n == 0:
            counts = (matrix == 0).reshape(matrix.shape[0] // n, n, matrix.shape[1]).sum(1)
            groups += counts.size
            ok += int((counts >= m).sum())
    return ok / groups if groups else float("nan")


def run_gpt2(args, settings: dict) -> dict:
    setup = gpt2_setup(args)
    bt, data, dense = setup["bt"], setup["data"], setup["dense"]
    calibration = bt.as_inputs(setup["calibration"])
    samples = len(setup["calibration"])
    val_xy = data["val_xy"]
    start = time.perf_counter()
    dense_loss = bt.val_loss(dense, *val_xy)
    log("gpt2", f"dense: validation loss {dense_loss:.4f} nats/char ({time.perf_counter() - start:.0f} s to evaluate)")
    out = {"model": {"params": dense.count_params(), **{k: setup["settings"][k] for k in (
        "num_layers", "num_heads", "hidden_dim", "intermediate_dim", "seq_len", "pretrain_steps")}},
        "pretrain": {k: setup["info"].get(k) for k in ("seconds", "val_loss", "cached")},
        "val_windows": len(val_xy[0]), "calibration_windows": samples, "dense_val_loss": dense_loss, "legs": {}}
    for pattern, kwargs in PATTERNS.items():
        for method in GPT2_METHODS:
            name = f"{method} {pattern}"
            model = bt.fresh_copy(dense, data, setup["settings"])
            try:
                start = time.perf_counter()
                report = oneshot_prune(model, None if method == "magnitude" else calibration, method=method,
                                       layers="transformer_layer", samples=samples, **kwargs)
                seconds = time.perf_counter() - start
                loss = bt.val_loss(model, *val_xy)
                blocks = bt.block_sparsity(model)
                leg = {"method": method, "pattern": pattern, "seconds": seconds, "val_loss": loss,
                       "increase": loss - dense_loss, "sparsity": blocks["sparsity"],
                       "embedding_sparsity": blocks["embedding_sparsity"], **report_fields(report)}
                if "sparsity_m_by_n" in kwargs:
                    m, n = kwargs["sparsity_m_by_n"]
                    leg["m_by_n_groups"] = m_by_n_share(bt, model, m, n)
            except Exception as error:  # one failed leg must not stop the others
                traceback.print_exc(file=sys.stderr)
                leg = {"method": method, "pattern": pattern, "error": error_text(error)}
                log("gpt2", f"{name}: FAILED: {leg['error']}")
            else:
                log("gpt2", f"{name}: validation loss {loss:.4f} ({loss - dense_loss:+.4f}), block-kernel sparsity "
                            f"{leg['sparsity']:.4f}, pruned in {seconds:.1f} s")
            out["legs"][name] = leg
    return out


# -- part 2: CNNs ----------------------------------------------------------------------------


def lenet_setup(args, settings: dict) -> dict:
    """The LeNet-5-style CNN trained as bench_oneshot.py trains it (Adam 1e-3, batch 128, the
    last 5,000 training images held out), from the cache when possible."""
    import keras

    from keras_prune.datasets import load_idx_dataset

    bo = sibling("bench_oneshot")
    data = load_idx_dataset(Path(args.data_dir) / "mnist")
    x, y = data["x_train"][..., None], data["y_train"]
    x, y = x[: settings["lenet_train"] + 5000], y[: settings["lenet_train"] + 5000]
    x_train, y_train = x[:-5000], y[:-5000]
    key = {"model": "lenet5", "epochs": settings["lenet_epochs"], "batch_size": 128, "seed": args.seed,
           "train": len(x_train), "data": digest(x_train, y_train), "recipe": 1}

    def build():
        return bo.lenet5(keras)

    def train(model):  # no reseeding between building and training, as in bench_oneshot.py
        start = time.perf_counter()
        bo.compile_model(keras, model)
        model.fit(x_train, y_train, epochs=settings["lenet_epochs"], batch_size=128, verbose=0)
        return time.perf_counter() - start

    keras.utils.set_random_seed(args.seed)
    model, info = cached_weights(args.cache_dir, "lenet5", key, build, train)
    return {"dense": model, "build": build, "info": info, "x_train": x_train,
            "x_test": data["x_test"][..., None], "y_test": data["y_test"],
            "description": "LeNet-5-style CNN (conv 6@5x5, conv 16@5x5, dense 120, 84, 10), MNIST, "
                           f"{len(x_train):,} training images, {settings['lenet_epochs']} epochs"}


def resnet_setup(args, settings: dict) -> dict:
    """bench_structured's ResNet-style CNN trained with its recipe (Adam 2e-3 with cosine decay,
    random flips) on a random subset of CIFAR-10, from the cache when possible."""
    import keras
    import numpy as np

    from keras_prune.datasets import load_cifar10

    bs = sibling("bench_structured")
    raw = load_cifar10(Path(args.data_dir) / "cifar10-jpg" / "CIFAR-10-images.tar")
    pick = np.random.default_rng(args.seed).permutation(len(raw["x_train"]))[: settings["cifar_train"]]
    data = {"x_train": raw["x_train"][pick].astype("float32") / 255.0, "y_train": raw["y_train"][pick],
            "x_test": raw["x_test"].astype("float32") / 255.0, "y_test": raw["y_test"]}
    width = settings["cifar_width"]
    key = {"model": "resnet_style", "width": width, "epochs": settings["cifar_epochs"], "lr": 2e-3,
           "seed": args.seed, "train": len(pick), "data": digest(raw["x_train"][pick], raw["y_train"][pick]),
           "recipe": 1}

    def build():
        return bs.resnet_style(keras, width)

    def train(model):  # no reseeding between building and training, as in bench_structured.py
        return bs.train(keras, model, data, settings["cifar_epochs"], 2e-3, args.seed)

    keras.utils.set_random_seed(args.seed)
    model, info = cached_weights(args.cache_dir, "resnet_style", key, build, train)
    return {"dense": model, "build": build, "info": info, "x_train": data["x_train"],
            "x_test": data["x_test"], "y_test": data["y_test"],
            "description": f"ResNet-style CNN (width {width}, 3 stages of one basic block, BatchNorm), CIFAR-10, "
                           f"{len(pick):,} training images, {settings['cifar_epochs']} epochs"}


def accuracy(model, x, y) -> float:
    import numpy as np

    logits = model.predict(x, batch_size=500, verbose=0)
    return float((np.argmax(logits, -1) == y).mean())


def run_cnn(name: str, setup: dict, settings: dict, seed: int) -> dict:
    import numpy as np

    dense = setup["dense"]
    limit = settings["test_images"]
    x_test, y_test = setup["x_test"][:limit], setup["y_test"][:limit]
    order = np.random.default_rng(seed + 3).permutation(len(setup["x_train"]))
    calibration = setup["x_train"][np.sort(order[: settings["cnn_samples"]])]
    more = setup["x_train"][np.sort(order[: settings["cnn_extra_samples"]])]  # the same images and more
    dense_acc = accuracy(dense, x_test, y_test)
    log(name, f"dense: test accuracy {dense_acc:.4f} on {len(y_test):,} images")
    out = {"description": setup["description"], "params": dense.count_params(),
           "train_seconds": setup["info"]["seconds"], "cached": setup["info"]["cached"],
           "test_images": len(y_test), "calibration_images": len(calibration), "dense_accuracy": dense_acc,
           "legs": []}
    variants = [(method, scope, False) for method, scope in CNN_LEGS]
    if name in EXTRA_MODELS:
        variants.append(("sparsegpt", "global", True))
        out["extra_calibration_images"] = len(more)
    for method, scope, extra in variants:
        data = more if extra else calibration
        for target in settings["sparsities"]:
            model = setup["build"]()
            model.set_weights(dense.get_weights())
            leg = {"method": method, "scope": scope, "target": target, "extra": extra,
                   "calibration_images": 0 if method == "magnitude" else len(data)}
            try:
                start = time.perf_counter()
                report = oneshot_prune(model, None if method == "magnitude" else data, method=method,
                                       sparsity=target, scope=scope, samples=len(data))
                leg["seconds"] = time.perf_counter() - start
                leg["accuracy"] = accuracy(model, x_test, y_test)
                leg.update(report_fields(report))
            except Exception as error:  # one failed leg must not stop the others
                traceback.print_exc(file=sys.stderr)
                leg["error"] = error_text(error)
                log(name, f"{method} {scope} {target:.2f}{' (more images)' * extra}: FAILED: {leg['error']}")
            else:
                log(name, f"{method} {scope} {target:.2f}{' (more images)' * extra}: test accuracy "
                          f"{leg['accuracy']:.4f}, reported sparsity "
                          f"{fmt(leg['reported_sparsity'], '.4f')}, pruned in {leg['seconds']:.1f} s")
            out["legs"].append(leg)
    return out


def run_cnns(args, settings: dict) -> dict:
    out = {}
    for name, setup in (("lenet5", lenet_setup), ("resnet", resnet_setup)):
        try:
            out[name] = run_cnn(name, setup(args, settings), settings, args.seed)
        except Exception as error:  # the other model still runs
            traceback.print_exc(file=sys.stderr)
            out[name] = {"error": error_text(error)}
            log(name, f"FAILED: {out[name]['error']}")
    return out


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cnn = {k: v for k, v in results.get("cnn", {}).items() if "legs" in v}
    if not cnn:
        return
    fig, axes = plt.subplots(1, len(cnn), figsize=(5.2 * len(cnn), 4), squeeze=False)
    styles = {("magnitude", "layer", False): ("tab:blue", "--", "o"),
              ("magnitude", "global", False): ("tab:blue", "-", "s"),
              ("sparsegpt", "layer", False): ("tab:red", "--", "o"),
              ("sparsegpt", "global", False): ("tab:red", "-", "s"),
              ("sparsegpt", "global", True): ("tab:orange", ":", "^")}
    for ax, (name, res) in zip(axes[0], cnn.items()):
        for (method, scope, extra), (color, line, marker) in styles.items():
            points = [(leg["target"], 100 * leg["accuracy"]) for leg in res["legs"]
                      if leg["method"] == method and leg["scope"] == scope and leg.get("extra", False) == extra
                      and "accuracy" in leg]
            label = f"{method}, {scope}" + (f", {res.get('extra_calibration_images')} images" if extra else "")
            if points:
                ax.plot(*zip(*points), color=color, linestyle=line, marker=marker, label=label)
        ax.axhline(100 * res["dense_accuracy"], color="grey", lw=0.8, label="dense")
        ax.set_title(CNN_MODELS[name])
        ax.set_xlabel("sparsity of the pruned kernels")
        ax.set_ylabel("test accuracy (%)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="lower left")
    fig.suptitle("One-shot pruning, no fine-tuning: magnitude vs SparseGPT")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- part 3: speed against Keras' GPTQ ---------------------------------------------------------


def vm_status(field: str) -> int:
    """A memory figure of this process from /proc/self/status (VmRSS, VmHWM), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def reset_peak() -> bool:
    """Resets this process' peak resident set size (VmHWM) to the current one (Linux >= 4.0).
    getrusage's ru_maxrss cannot serve here: a child started by a large parent inherits the
    parent's high-water mark."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class RssSampler:
    """Highest resident set size of this process seen every 10 ms between start() and stop()
    (a cross-check of VmHWM, and the measure where VmHWM cannot be reset)."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def current() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current())
            self._stop.wait(0.01)

    def start(self):
        self.peak = self.current()
        self._thread.start()
        return self

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.current())
        return self.peak


def dense_stack(keras, layers: int, width: int):
    """``layers`` Dense layers of ``width`` x ``width`` with ReLU, weights drawn from a normal
    distribution scaled so that activations neither vanish nor explode (He)."""
    init = keras.initializers.RandomNormal(stddev=math.sqrt(2.0 / width))
    return keras.Sequential([keras.Input((width,)), *[
        keras.layers.Dense(width, activation="relu", kernel_initializer=init, name=f"dense_{i}")
        for i in range(layers)]], name="dense_stack")


def pretokenized(text):
    """GPTQConfig requires a tokenizer; the calibration data here is already token ids, and
    Keras calls the tokenizer only on strings."""
    raise TypeError("the calibration data is pre-tokenized; this tokenizer is never meant to be called")


def gptq_structure(model_name: str, model, calibration):
    """Keras' GPTQ data loader cuts windows of `sequence_length` tokens out of the
    concatenated dataset. To hand it exactly our calibration samples, the dataset is the sample
    indices 0..n-1 with `sequence_length=1` (so the n windows are the n indices, in a rotated
    order), and the first pre-block layer looks each index up: a window of token ids for the
    GPT-2 (then its token + position embedding, as keras_hub's GPT2CausalLM does), an input
    vector for the Dense stack. Returns (structure, filters)."""
    import keras
    import keras_hub
    from keras import ops

    table = ops.convert_to_tensor(calibration)
    quantizable = (keras.layers.Dense, keras.layers.EinsumDense)
    if model_name == "gpt2":
        backbone = next(layer for layer in model._flatten_layers() if isinstance(layer, keras_hub.models.GPT2Backbone))
        token_ids = keras.Input((None,), dtype="int32")
        tokens = backbone.token_embedding(token_ids)
        embed = keras.Model(token_ids, backbone.embeddings_add((tokens, backbone.position_embedding(tokens))))

        def window(index):  # (1, 1) sample index -> (1, seq_len) token ids
            return ops.take(table, ops.reshape(index, (-1,)), axis=0)

        structure = {"pre_block_layers": [window, embed], "sequential_blocks": list(backbone.transformer_layers)}

        def filters(layer):
            return isinstance(layer, quantizable) and "transformer_layer" in layer.path
    else:
        def vector(index):  # (1, 1) sample index -> (1, 1, width) input
            return ops.take(table, index, axis=0)

        blocks = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
        structure = {"pre_block_layers": [vector], "sequential_blocks": blocks}

        def filters(layer):
            return isinstance(layer, quantizable)
    return structure, filters


def speed_worker(args) -> None:
    """One timed run in this process: MODEL:METHOD, written as JSON to --worker-output."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np

    model_name, method = args.speed_worker.split(":")
    settings = settings_for(args)
    out = {"model": model_name, "method": method, "library": library_version()}
    if model_name == "gpt2":
        setup = gpt2_setup(args)
        model, calibration = setup["dense"], setup["calibration"]
        samples = len(calibration)
        prune_inputs, layers = setup["bt"].as_inputs(calibration), "transformer_layer"
    else:
        keras.utils.set_random_seed(args.seed)
        model = dense_stack(keras, settings["stack_layers"], settings["stack_width"])
        samples = settings["stack_samples"]
        calibration = np.random.default_rng(args.seed + 4).standard_normal(
            (samples, settings["stack_width"])).astype("float32")
        prune_inputs, layers = calibration, None
        reference = model.predict(calibration, batch_size=samples, verbose=0)
    out.update(params=model.count_params(), samples=samples)
    sampler = RssSampler()
    out["setup_peak"] = vm_status("VmHWM")  # building the model, loading the data
    exact = reset_peak()
    out["rss_before"] = vm_status("VmRSS")
    sampler.start()
    start = time.perf_counter()
    if method == "sparsegpt":
        report = oneshot_prune(model, prune_inputs, method="sparsegpt", sparsity=0.5, layers=layers,
                               samples=samples, damping=settings["damping"])
        out.update(report_fields(report))
    else:
        structure, filters = gptq_structure(model_name, model, calibration)
        config = keras.quantizers.GPTQConfig(
            dataset=np.arange(samples, dtype="int32"), tokenizer=pretokenized, weight_bits=settings["gptq_bits"],
            num_samples=samples, sequence_length=1, hessian_damping=settings["damping"],
            group_size=settings["gptq_group"], quantization_layer_structure=structure)
        model.quantize("gptq", config=config, filters=filters)
        out["quantized_layers"] = sum(1 for layer in model._flatten_layers()
                                      if getattr(layer, "is_gptq_calibrated", False))
    out["seconds"] = time.perf_counter() - start
    out["rss_sampled_peak"] = sampler.stop()
    out["rss_peak"] = vm_status("VmHWM") if exact else out["rss_sampled_peak"]
    out["peak_measure"] = "VmHWM, reset before the call" if exact else "RSS sampled every 10 ms"
    # Not timed: what the run did to the model, to show it did its work.
    if model_name == "gpt2":
        out["val_loss"] = setup["bt"].val_loss(model, *setup["data"]["val_xy"])
    else:
        after = model.predict(calibration, batch_size=samples, verbose=0)
        out["output_error"] = float(np.linalg.norm(after - reference) / np.linalg.norm(reference))
    Path(args.worker_output).write_text(json.dumps(out, indent=2) + "\n")


def run_speed(args, settings: dict) -> dict:
    """The four timed runs, each in a process of its own, one after the other."""
    import statistics

    gpt2_setup(args)  # pretrains and caches the GPT-2 now if the cache lacks it, so that no worker trains
    out = {}
    base = [sys.executable, str(Path(__file__).resolve()), "--data-dir", str(args.data_dir),
            "--cache-dir", str(args.cache_dir), "--seed", str(args.seed)] + (["--quick"] if args.quick else [])
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2"}
    with tempfile.TemporaryDirectory(prefix="bench_calibrated_") as folder:
        for model_name in SPEED_MODELS:
            runs = {method: [] for method in SPEED_METHODS}
            for repeat in range(settings["speed_repeats"]):
                for method in SPEED_METHODS:
                    target = Path(folder) / f"{model_name}_{method}_{repeat}.json"
                    log("speed", f"{SPEED_MODELS[model_name]}, {SPEED_METHODS[method]}: a process of its own")
                    done = subprocess.run([*base, "--speed-worker", f"{model_name}:{method}",
                                           "--worker-output", str(target)], env=env, capture_output=True, text=True)
                    if done.returncode != 0 or not target.is_file():
                        tail = [line for line in done.stderr.strip().splitlines() if line.strip()]
                        sys.stderr.write(done.stderr)
                        runs[method].append({"error": (tail[-1] if tail else f"exit code {done.returncode}")[:300]})
                        log("speed", f"FAILED: {runs[method][-1]['error']}")
                        continue
                    row = json.loads(target.read_text())
                    runs[method].append(row)
                    log("speed", f"{row['seconds']:.1f} s, peak RSS {row['rss_peak'] / 2**20:.0f} MiB "
                                 f"(before the call {row['rss_before'] / 2**20:.0f} MiB)")
            entry = {}
            for method, rows in runs.items():
                good = [row for row in rows if "seconds" in row]
                if not good:
                    entry[method] = rows[-1]
                    continue
                median = statistics.median(row["seconds"] for row in good)
                entry[method] = {**min(good, key=lambda row: abs(row["seconds"] - median)), "seconds": median,
                                 "all_seconds": [row["seconds"] for row in good]}
            if all("seconds" in entry[m] for m in SPEED_METHODS):
                entry["ratio"] = entry["sparsegpt"]["seconds"] / entry["gptq"]["seconds"]
            out[model_name] = entry
    return out


# -- tables and targets ------------------------------------------------------------------------


def fmt(value, spec: str, default: str = "-") -> str:
    return default if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def cnn_leg(results: dict, model: str, method: str, scope: str, target: float, extra: bool = False) -> dict | None:
    for leg in results.get("cnn", {}).get(model, {}).get("legs", []):
        if (leg["method"] == method and leg["scope"] == scope and abs(leg["target"] - target) < 1e-9
                and leg.get("extra", False) == extra):
            return leg
    return None


def targets(results: dict) -> list[dict]:
    """Each target: what it asks, what was measured, PASS / FAIL (FAIL with the reason when it
    could not be measured)."""
    rows = []

    def add(text, measured, passed, why=None):
        verdict = ("PASS" if passed else "FAIL") if measured is not None else f"FAIL (not measured: {why})"
        rows.append({"target": text, "measured": measured if measured is not None else "-", "passed": bool(passed),
                     "verdict": verdict})

    gpt2 = results.get("gpt2", {})
    legs = gpt2.get("legs", {})
    for pattern, method, factor in (("50%", "sparsegpt", 0.3), ("2:4", "sparsegpt", 0.45), ("50%", "wanda", 1.0)):
        text = (f"GPT-2 {pattern}: {method.replace('sparsegpt', 'SparseGPT').replace('wanda', 'Wanda')}'s loss "
                f"increase <= {factor:g}x magnitude's")
        ours, base = legs.get(f"{method} {pattern}", {}), legs.get(f"magnitude {pattern}", {})
        if "increase" in ours and "increase" in base:
            ratio = ours["increase"] / base["increase"] if base["increase"] > 0 else float("nan")
            add(text, f"{ours['increase']:+.4f} vs {base['increase']:+.4f} ({fmt(ratio, '.2f')}x)",
                ours["increase"] <= factor * base["increase"])
        else:
            add(text, None, False, ours.get("error") or base.get("error") or gpt2.get("error") or "not run")
    lenet = results.get("cnn", {}).get("lenet5", {})
    dense = lenet.get("dense_accuracy")
    for scope, target, points in (("layer", 0.5, 0.5), ("global", 0.8, 1.0)):
        text = f"LeNet-5 SparseGPT {scope} {target:.0%}: within {points:g} point of dense"
        leg = cnn_leg(results, "lenet5", "sparsegpt", scope, target)
        if leg and "accuracy" in leg and dense is not None:
            drop = 100 * (dense - leg["accuracy"])
            add(text, f"{100 * leg['accuracy']:.2f}% ({-drop:+.2f} pt)", drop <= points)
        else:
            add(text, None, False, (leg or {}).get("error") or lenet.get("error") or "not run")
    text = "LeNet-5 global 90%: SparseGPT >= magnitude + 15 points"
    ours, base = cnn_leg(results, "lenet5", "sparsegpt", "global", 0.9), cnn_leg(results, "lenet5", "magnitude",
                                                                                    "global", 0.9)
    if ours and base and "accuracy" in ours and "accuracy" in base:
        gap = 100 * (ours["accuracy"] - base["accuracy"])
        add(text, f"{100 * ours['accuracy']:.2f}% vs {100 * base['accuracy']:.2f}% ({gap:+.1f} pt)", gap >= 15)
    else:
        add(text, None, False, (ours or {}).get("error") or (base or {}).get("error") or lenet.get("error")
            or "not run")
    speed = results.get("speed", {})
    for model_name, label in SPEED_MODELS.items():
        text = f"speed, {label}: SparseGPT <= 2x GPTQ's time"
        entry = speed.get(model_name, {})
        if "ratio" in entry:
            add(text, f"{entry['sparsegpt']['seconds']:.1f} s vs {entry['gptq']['seconds']:.1f} s "
                      f"({entry['ratio']:.2f}x)", entry["ratio"] <= 2.0)
        else:
            why = next((entry[m]["error"] for m in SPEED_METHODS if "error" in entry.get(m, {})), None)
            add(text, None, False, why or speed.get("error") or "not run")
    return rows


def gpt2_table(results: dict) -> str:
    gpt2 = results.get("gpt2")
    if not gpt2:
        return "(the GPT-2 part did not run)"
    if "error" in gpt2:
        return f"GPT-2 part FAILED: {gpt2['error']}"
    out = ["| pattern | method | block-kernel sparsity | M:N groups hold | val loss (nats/char) | vs dense | "
           "vs magnitude's increase | prune s |", "|---|---|---|---|---|---|---|---|",
           f"| dense | - | 0.0% | - | {gpt2['dense_val_loss']:.4f} | - | - | - |"]
    for pattern in PATTERNS:
        base = gpt2["legs"].get(f"magnitude {pattern}", {})
        for method in GPT2_METHODS:
            leg = gpt2["legs"].get(f"{method} {pattern}")
            if leg is None:
                out.append(f"| {pattern} | {method} | not run | | | | | |")
            elif "error" in leg:
                out.append(f"| {pattern} | {method} | FAILED: {leg['error'].replace('|', '/')} | | | | | |")
            else:
                relative = (leg["increase"] / base["increase"] if base.get("increase", 0) > 0 and method != "magnitude"
                            else None)
                out.append(f"| {pattern} | {method} | {leg['sparsity']:.1%} | {fmt(leg.get('m_by_n_groups'), '.1%')} | "
                           f"{leg['val_loss']:.4f} | {leg['increase']:+.4f} | {fmt(relative, '.2f')}"
                           f"{'x' if relative is not None else ''} | {leg['seconds']:.1f} |")
    return "\n".join(out)


def cnn_table(results: dict, name: str) -> str:
    res = results.get("cnn", {}).get(name)
    if not res:
        return f"({CNN_MODELS[name]}: not run)"
    if "error" in res:
        return f"{CNN_MODELS[name]}: FAILED: {res['error']}"
    sparsities = sorted({leg["target"] for leg in res["legs"]})
    variants = [(m, s, False) for m, s in CNN_LEGS]
    header = ["sparsity", *[f"{m}, {s}" for m, s in CNN_LEGS]]
    if "extra_calibration_images" in res:
        variants.append(("sparsegpt", "global", True))
        header.append(f"sparsegpt, global, {res['extra_calibration_images']} images")
    dense = f"{100 * res['dense_accuracy']:.2f}%"
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
           "| dense | " + " | ".join([dense] * len(variants)) + " |"]
    for target in sparsities:
        cells = [f"{target:.0%}"]
        for method, scope, extra in variants:
            leg = cnn_leg(results, name, method, scope, target, extra)
            cells.append("not run" if leg is None else f"FAILED: {leg['error'].replace('|', '/')}" if "error" in leg
                         else f"{100 * leg['accuracy']:.2f}%")
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def speed_table(results: dict) -> str:
    speed = results.get("speed")
    if not speed:
        return "(the speed part did not run)"
    if "error" in speed:
        return f"speed part FAILED: {speed['error']}"
    out = ["| model | parameters | method | seconds | peak RSS during the call | RSS before the call | "
           "extra memory | check after the call |", "|---|---|---|---|---|---|---|---|"]
    for model_name, label in SPEED_MODELS.items():
        entry = speed.get(model_name, {})
        for method, method_label in SPEED_METHODS.items():
            row = entry.get(method)
            if row is None:
                out.append(f"| {label} | | {method_label} | not run | | | | |")
            elif "error" in row:
                out.append(f"| {label} | | {method_label} | FAILED: {row['error'].replace('|', '/')} | | | | |")
            else:
                check = (f"val loss {row['val_loss']:.4f}" if "val_loss" in row else
                         f"output rel. error {row['output_error']:.3f}" if "output_error" in row else "-")
                out.append(f"| {label} | {row['params']:,} | {method_label} | {row['seconds']:.1f} | "
                           f"{row['rss_peak'] / 2**20:,.0f} MiB | {row['rss_before'] / 2**20:,.0f} MiB | "
                           f"{(row['rss_peak'] - row['rss_before']) / 2**20:,.0f} MiB | {check} |")
        if "ratio" in entry:
            out.append(f"| {label} | | SparseGPT / GPTQ | {entry['ratio']:.2f}x | | | | |")
    return "\n".join(out)


def tables(results: dict) -> str:
    out = ["Character-level GPT-2 on Tiny Shakespeare (one-shot, transformer-block kernels):", "",
           gpt2_table(results), ""]
    for name, label in CNN_MODELS.items():
        out += [f"{label}: test accuracy after one-shot pruning (no fine-tuning):", "", cnn_table(results, name), ""]
    out += ["Speed, SparseGPT 50% against Keras GPTQ 4-bit (each run in a process of its own):", "",
            speed_table(results), "", "| target | measured | result |", "|---|---|---|"]
    for row in targets(results):
        out.append(f"| {row['target']} | {row['measured']} | {row['verdict'].replace('|', '/')} |")
    return "\n".join(out)


def reading(results: dict) -> str:
    """A few sentences read off the numbers."""
    lines = []
    gpt2 = results.get("gpt2", {})
    legs = gpt2.get("legs", {})
    if "dense_val_loss" in gpt2:
        parts = []
        for pattern in PATTERNS:
            got = {m: legs.get(f"{m} {pattern}", {}).get("increase") for m in GPT2_METHODS}
            if all(v is not None for v in got.values()):
                best = min(got, key=got.get)
                parts.append(f"at {pattern} magnitude {got['magnitude']:+.3f}, Wanda {got['wanda']:+.3f}, SparseGPT "
                             f"{got['sparsegpt']:+.3f} nats/char (best: {best})")
        if parts:
            lines.append(f"GPT-2, loss increase over the dense {gpt2['dense_val_loss']:.4f} nats/char: "
                         + "; ".join(parts) + ".")
        shares = {name: leg["m_by_n_groups"] for name, leg in legs.items() if "m_by_n_groups" in leg}
        if shares:
            off = [name for name, share in shares.items() if share < 1]
            lines.append("Every M:N leg holds its pattern in every group along the kernels' input axis." if not off else
                         "M:N legs whose groups along the input axis do not all hold the pattern: "
                         + ", ".join(f"{n} ({shares[n]:.1%})" for n in off) + ".")
        sparsities = {name: leg["sparsity"] for name, leg in legs.items() if "sparsity" in leg}
        off = [name for name, s in sparsities.items() if abs(s - 0.5) > 0.005]
        if off:
            lines.append("Block-kernel sparsity away from 50%: " + ", ".join(f"{n} {sparsities[n]:.1%}" for n in off)
                         + ".")
        embed = [name for name, leg in legs.items() if leg.get("embedding_sparsity", 0) > 0.001]
        if embed:
            lines.append("The embeddings were pruned in: " + ", ".join(embed) + " (only the blocks were selected).")
    for name, label in CNN_MODELS.items():
        res = results.get("cnn", {}).get(name, {})
        if "legs" not in res:
            continue
        dense = res["dense_accuracy"]
        keep = {}
        for method, scope in CNN_LEGS:
            within = [leg["target"] for leg in res["legs"] if leg["method"] == method and leg["scope"] == scope
                      and not leg.get("extra") and "accuracy" in leg and dense - leg["accuracy"] <= 0.01]
            keep[(method, scope)] = max(within) if within else None
        text = ", ".join(f"{m} {s} {fmt(v, '.0%', 'none')}" for (m, s), v in keep.items())
        lines.append(f"{label} (dense {dense:.2%}, {res['calibration_images']} calibration images): highest "
                     f"sparsity within 1 point of dense: {text}.")
        if "extra_calibration_images" in res:
            cells = []
            for target in (0.8, 0.9):
                few, many = (cnn_leg(results, name, "sparsegpt", "global", target, extra) for extra in (False, True))
                if few and many and "accuracy" in few and "accuracy" in many:
                    cells.append(f"{many['accuracy']:.2%} at {target:.0%} (with {res['calibration_images']}: "
                                 f"{few['accuracy']:.2%})")
            if cells:
                lines.append(f"With {res['extra_calibration_images']} calibration images instead of "
                             f"{res['calibration_images']} (outside the targets), global SparseGPT on the {label} "
                             "reaches " + " and ".join(cells) + ".")
    speed = results.get("speed", {})
    for model_name, label in SPEED_MODELS.items():
        entry = speed.get(model_name, {})
        if "ratio" in entry:
            s, g = entry["sparsegpt"], entry["gptq"]
            lines.append(f"{label} ({s['params']:,} parameters, {s['samples']} calibration samples): SparseGPT "
                         f"{s['seconds']:.1f} s against GPTQ {g['seconds']:.1f} s ({entry['ratio']:.2f}x); extra "
                         f"resident memory during the call {(s['rss_peak'] - s['rss_before']) / 2**20:,.0f} MiB "
                         f"against {(g['rss_peak'] - g['rss_before']) / 2**20:,.0f} MiB.")
    library = results.get("library", {}).get("sources")
    changed = sorted({f"{SPEED_MODELS[m]} {meth}" for m, entry in speed.items() if isinstance(entry, dict)
                      for meth, row in entry.items() if isinstance(row, dict)
                      and row.get("library", {}).get("sources") not in (None, library)})
    if library and changed:
        lines.append("The keras_prune sources changed while this run was going: the speed runs of "
                     + ", ".join(changed) + " used other sources than the first two parts; run again.")
    failed = [f"GPT-2 {n}" for n, leg in legs.items() if "error" in leg]
    failed += [f"{n} {leg['method']} {leg['scope']} {leg['target']:.0%}" for n, res in results.get("cnn", {}).items()
               for leg in res.get("legs", []) if "error" in leg]
    if failed:
        lines.append("Legs that failed (see the tables for the reason): " + ", ".join(failed) + ".")
    warned = sorted({w for leg in legs.values() for w in leg.get("warnings", [])}
                    | {w for res in results.get("cnn", {}).values() for leg in res.get("legs", [])
                       for w in leg.get("warnings", [])})
    if warned:
        lines.append("Warnings the library reported: " + "; ".join(warned[:6])
                     + (f" (and {len(warned) - 6} more)" if len(warned) > 6 else "") + ".")
    rows = targets(results)
    met = [row["target"] for row in rows if row["passed"]]
    missed = [f"{row['target']} ({row['measured']})" for row in rows if not row["passed"]]
    lines.append(f"Targets met: {len(met)} of {len(rows)}" + (". Missed: " + "; ".join(missed) if missed else "")
                 + ".")
    return "\n".join(f"* {line}" for line in lines)


# -- markdown --------------------------------------------------------------------------------


def command_line(args) -> str:
    names = ("cifar_epochs", "cifar_train", "speed_repeats", "seed", "parts")
    return sibling("bench_transformers").rerun_command("bench_calibrated.py", args, parse_args([]), names)


def section(results: dict) -> str:
    s, env = results["settings"], results["environment"]
    gpt2 = results.get("gpt2", {})
    model = gpt2.get("model", {})
    speed = results.get("speed", {})
    plot_path = results.get("plot")
    cnn = results.get("cnn", {})
    described = "; ".join(f"{res['description']} (dense {res['dense_accuracy']:.2%}, {res['calibration_images']} "
                          f"calibration images, {res['test_images']:,} test images)"
                          for res in cnn.values() if "description" in res)
    stack = speed.get("stack", {}).get("sparsegpt", {})
    extra = cnn.get("lenet5", {}).get("extra_calibration_images")
    lib = results.get("library", {})
    bullets = [
        f"* Character-level GPT-2 (`keras_hub.models.GPT2Backbone`, {model.get('num_layers', '?')} layers, width "
        f"{model.get('hidden_dim', '?')}, {fmt(model.get('params'), ',', '?')} parameters) pretrained on the first "
        "90% of Tiny Shakespeare by `benchmarks/bench_transformers.py` (the same cached weights). Only the kernels of "
        "the transformer blocks are pruned (`layers=\"transformer_layer\"`); calibration: "
        f"{gpt2.get('calibration_windows', s['gpt2_samples'])} random windows of {model.get('seq_len', '?')} "
        "characters from the training text. Validation loss: mean next-character cross-entropy over all "
        f"{gpt2.get('val_windows', '?')} non-overlapping windows of the last 10%. M:N prunes M of every N "
        "consecutive weights along each kernel's input axis.",
        f"* CNNs: {described or 'not run'}. Every prunable kernel is pruned (convolutions and Dense); "
        "`scope=\"global\"` takes each layer's sparsity from one magnitude ranking over all of them, then runs the "
        "method layer by layer. The calibration images are a random draw from the training images. "
        + (f"On LeNet-5, one more column outside the targets: global SparseGPT with {extra} calibration images (the "
           f"same {cnn['lenet5']['calibration_images']} and more), since its first Dense layer has 400 inputs, more "
           "than 256 images give rows to its Hessian." if extra else ""),
        "* Speed: `oneshot_prune(method=\"sparsegpt\", sparsity=0.5)` against Keras' "
        f"`model.quantize(\"gptq\", config=GPTQConfig(weight_bits={s['gptq_bits']}, group_size={s['gptq_group']}, "
        f"hessian_damping={s['damping']:g}))` with the same damping, on the GPT-2 (its transformer blocks are GPTQ's "
        f"sequential blocks) and on a stack of {s['stack_layers']} Dense layers of {s['stack_width']} x "
        f"{s['stack_width']} with ReLU ({fmt(stack.get('params'), ',', '?')} parameters, random normal weights, "
        f"calibration: {s['stack_samples']} random normal inputs; each Dense layer is one of GPTQ's sequential "
        "blocks, so both methods compress one layer at a time on the outputs of the already-compressed ones). Both "
        "get exactly the same calibration samples: GPTQ's data loader cuts windows out of the concatenated dataset, "
        "so its dataset is the sample indices with `sequence_length=1` and its first pre-block layer looks each "
        "sample up. GPTQ runs its blocks one sample at a time, as Keras implements it; SparseGPT in batches of 32. "
        "Each of the runs has a process of its own (one after the other), with the model built and the data ready "
        "before the clock starts; the time is cold, with whatever tracing each method does on its first call. "
        "Memory: the process' resident set size just before the call and its peak during "
        "the call (the kernel's high-water mark, VmHWM, reset just before the call); \"extra\" is the difference.",
        f"* keras-prune at commit {lib.get('commit', '?')}"
        + (" with uncommitted changes" if lib.get("edited_since_commit") else "")
        + f" (sources digest {lib.get('sources', '?')}). One seed ({s['seed']}). Machine: {env['cpus']} CPU cores shared with other work (load average "
        f"{env['load_average'][0]:.1f} at the start), Keras {env['keras']}, TensorFlow {env['tensorflow']}, "
        f"keras-hub {env['keras_hub']}. Wall time of the run: {results['total_seconds'] / 60:.1f} min.",
    ]
    intro = ("`benchmarks/bench_calibrated.py` prunes fresh copies of the same trained dense weights once with "
             "`oneshot_prune` (no fine-tuning) and measures them side by side in one run:")
    lines = ["## Results: calibrated one-shot pruning (SparseGPT, Wanda) against magnitude", "",
             textwrap.fill(intro, 100), "", "```",
             results.get("command", ".venv/bin/python benchmarks/bench_calibrated.py --write-docs"), "```", "",
             "Setup:", ""]
    lines += [textwrap.fill(b, 100, subsequent_indent="  ", break_long_words=False, break_on_hyphens=False)
              for b in bullets]
    lines += ["", tables(results), ""]
    if plot_path:
        image = os.path.relpath(ROOT / plot_path, DOCS.parent)
        lines += [f"![accuracy vs sparsity, one-shot magnitude and SparseGPT]({image})", ""]
    lines += ["Reading:", "", reading(results), "",
              f"The numbers are also written to `{results.get('output', 'benchmarks/results/calibrated.json')}`."]
    return "\n".join(lines)


def readme_line(results: dict) -> str:
    """The README's results entry: two sentences with the headline numbers."""
    parts = []
    lenet = results.get("cnn", {}).get("lenet5", {})
    if "dense_accuracy" in lenet:
        cells = []
        for target in (0.8, 0.9):
            mag, sg = (cnn_leg(results, "lenet5", m, "global", target) for m in ("magnitude", "sparsegpt"))
            if mag and sg and "accuracy" in mag and "accuracy" in sg:
                cells.append(f"{target:.0%}: {mag['accuracy']:.2%} -> **{sg['accuracy']:.2%}**")
        if cells:
            parts.append(f"LeNet-5 on MNIST (dense {lenet['dense_accuracy']:.2%}), global magnitude -> global "
                         "SparseGPT at " + ", ".join(cells))
    legs = results.get("gpt2", {}).get("legs", {})
    cells = []
    for pattern in ("50%", "2:4"):
        got = [legs.get(f"{m} {pattern}", {}).get("increase") for m in GPT2_METHODS]
        if all(v is not None for v in got):
            cells.append(f"{pattern} {got[0]:+.3f} / {got[1]:+.3f} / **{got[2]:+.3f}**")
    if cells:
        parts.append("char GPT-2 validation loss vs dense, magnitude / Wanda / SparseGPT: " + ", ".join(cells))
    entry = results.get("speed", {}).get("stack", {})
    if "ratio" in entry:
        parts.append(f"SparseGPT on a {entry['sparsegpt']['params'] / 1e6:.0f}M-parameter Dense stack takes "
                     f"{entry['sparsegpt']['seconds']:.0f} s, {entry['ratio']:.2f}x Keras' GPTQ")
    body = "; ".join(parts) if parts else "not measured yet"
    command = results.get("command", "python benchmarks/bench_calibrated.py --write-docs")
    text = (f"**Calibrated one-shot pruning**, no fine-tuning (`oneshot_prune`, 128-256 calibration samples; "
            f"`{command}`, [docs/oneshot.md](docs/oneshot.md)): {body}.")
    return textwrap.fill(text, 100, break_long_words=False, break_on_hyphens=False)


def replace_between_markers(path: Path, body: str, anchor: str | None = None, markers=(BEGIN, END)) -> None:
    """Writes ``body`` between the ``markers`` (by default the calibrated ones) of ``path``; adds
    them (at the end, or just before the line starting with ``anchor``) when the file lacks them."""
    begin, end = markers
    text = path.read_text() if path.is_file() else ""
    block = f"{begin}\n{body.strip()}\n{end}"
    if begin in text and end in text and text.index(begin) < text.index(end):
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    elif anchor and anchor in text:
        head, tail = text.split(anchor, 1)
        text = head + block + "\n\n" + anchor + tail
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + block + "\n"
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_docs(results: dict, args) -> None:
    if not args.write_docs:
        return
    target = Path(args.write_docs)
    replace_between_markers(target, section(results))
    print(f"wrote the results section of {target}")
    if target.resolve() == DOCS.resolve() and not results["settings"]["quick"]:
        replace_between_markers(README, readme_line(results), anchor="**File size**")
        print(f"wrote the calibrated line of {README}")


# -- main ------------------------------------------------------------------------------------


def library_version() -> dict:
    """The keras_prune sources this process runs: a digest of their contents (changes with any
    edit), and the repository's commit with whether the sources differ from it."""
    import keras_prune

    folder = Path(keras_prune.__file__).parent
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*.py")):
        h.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    out = {"sources": h.hexdigest()[:16]}
    try:
        git = ["git", "-C", str(ROOT)]
        out["commit"] = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                       check=True).stdout.strip()
        out["edited_since_commit"] = bool(subprocess.run([*git, "status", "--porcelain", "--", str(folder)],
                                                         capture_output=True, text=True, check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: the digest still says it
        pass
    return out


def to_json(value):
    if isinstance(value, tuple):
        return list(value)
    return str(value)


def main(argv=None) -> dict:
    """Runs the benchmark; returns the results (with the markdown tables under ``"table"``)."""
    args = parse_args(argv)
    if args.speed_worker:
        speed_worker(args)
        return {}
    if args.from_results:
        results = json.loads(args.from_results.read_text())
        results["table"] = tables(results)
        print(results["table"])
        print()
        print(reading(results))
        write_docs(results, args)
        return results
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    start = time.perf_counter()
    settings = settings_for(args)
    parts = args.parts.split(",")
    sibling("bench_transformers").import_library()  # one version of keras_prune for the whole run
    results = {"settings": settings, "environment": sibling("bench_transformers").environment(),
               "command": command_line(args), "parts": parts,
               "library": library_version()}
    runners = {"gpt2": run_gpt2, "cnn": run_cnns, "speed": run_speed}
    for part in PARTS:
        if part not in parts:
            continue
        part_start = time.perf_counter()
        try:
            results[part] = runners[part](args, settings)
        except Exception as error:  # reported; the other parts still run
            traceback.print_exc(file=sys.stderr)
            results[part] = {"error": error_text(error)}
            log(part, f"FAILED: {results[part]['error']}")
        results.setdefault("part_seconds", {})[part] = time.perf_counter() - part_start
    # A smoke run's numbers mean nothing: by default they go to a temporary folder, not the repository.
    scratch = Path(tempfile.gettempdir()) / "bench_calibrated_quick"
    plot_path = args.plot or (scratch / PLOT.name if args.quick else PLOT)
    if "cnn" in parts:
        try:
            plot(results, plot_path)
            where = plot_path.resolve()
            results["plot"] = str(where.relative_to(ROOT) if where.is_relative_to(ROOT) else where)
        except Exception as error:  # only the figure is lost
            traceback.print_exc(file=sys.stderr)
            log("plot", f"FAILED: {error_text(error)}")
    results["total_seconds"] = time.perf_counter() - start
    results["environment"]["load_average_end"] = list(os.getloadavg())
    results["targets"] = targets(results)
    results["table"] = tables(results)
    print()
    print(results["table"])
    print()
    print(reading(results))
    output = args.output or (scratch if args.quick else RESULTS) / "calibrated.json"
    return sibling("bench_transformers").save_results(results, output, lambda: write_docs(results, args), to_json)


if __name__ == "__main__":
    main()
