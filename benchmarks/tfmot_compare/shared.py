"""What both tools share: the models, the data, its order, the schedule and the timer.

This module is imported in two worlds: the main environment (Keras 3, keras-prune) and the
tfmot environment (Keras 2 as ``tf_keras``, where keras-prune is not installed). So it depends
on numpy only; each world passes its own ``keras`` module to :func:`build_model`, and the
dataset reader of keras-prune (numpy-only) is loaded from its file.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CACHE = REPO / "benchmarks" / ".cache" / "tfmot_compare"
RESULTS = REPO / "benchmarks" / "results"

SPARSITIES = (0.5, 0.75, 0.9, 0.92, 0.95, 0.98)
SEEDS = (0, 1, 2)
TOOLS = ("keras_prune", "tfmot")
# keras-prune with one magnitude ranking across all layers (tfmot has no such option): not part
# of the like-for-like comparison, run on request to show what the allocation is worth.
EXTRA_TOOLS = ("keras_prune_global",)

# name -> dataset, pretraining epochs (full passes), fine-tuning images per epoch, description.
# The CNNs cost about 10x more per image than the MLP on CPU: they fine-tune on a quarter of
# the training set per epoch, so the whole matrix fits in well under an hour on 2 cores.
MODELS = {
    "lenet_300_100": ("mnist", 8, 60000, "LeNet-300-100: Dense 300-100-10, ReLU"),
    "lenet5": ("mnist", 4, 15000, "LeNet-5 as in Caffe and Han et al.: conv 20@5x5, pool, conv 50@5x5, pool, "
                                  "Dense 500-10"),
    "fashion_cnn": ("fashion-mnist", 5, 15000, "small CNN: conv 16@3x3, pool, conv 32@3x3, pool, Dense 128-10"),
}


def build_model(name: str, keras) -> object:
    """The model ``name`` built with the given ``keras`` module (Keras 3 or ``tf_keras``).

    Weights are not initialized meaningfully here: both tools load the same pretrained arrays.
    """
    L = keras.layers
    if name == "lenet_300_100":
        body = [L.Flatten(), L.Dense(300, activation="relu"), L.Dense(100, activation="relu"), L.Dense(10)]
    elif name == "lenet5":
        body = [L.Reshape((28, 28, 1)), L.Conv2D(20, 5, activation="relu"), L.MaxPooling2D(),
                L.Conv2D(50, 5, activation="relu"), L.MaxPooling2D(), L.Flatten(),
                L.Dense(500, activation="relu"), L.Dense(10)]
    elif name == "fashion_cnn":
        body = [L.Reshape((28, 28, 1)), L.Conv2D(16, 3, activation="relu"), L.MaxPooling2D(),
                L.Conv2D(32, 3, activation="relu"), L.MaxPooling2D(), L.Flatten(),
                L.Dense(128, activation="relu"), L.Dense(10)]
    else:
        raise ValueError(f"Unknown model {name!r}; choose one of {', '.join(MODELS)}.")
    return keras.Sequential([keras.Input((28, 28))] + body, name=name)


def load_data(data_dir: Path, model: str) -> dict[str, np.ndarray]:
    """The model's dataset via keras-prune's own IDX reader (loaded by path: numpy only)."""
    spec = importlib.util.spec_from_file_location("kp_datasets", REPO / "src" / "keras_prune" / "datasets.py")
    datasets = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(datasets)
    return datasets.load_idx_dataset(Path(data_dir) / MODELS[model][0])


def epoch_indices(seed: int, epoch: int, n: int, samples: int) -> np.ndarray:
    """The images of one fine-tuning epoch, in order: the same for both tools."""
    return np.random.default_rng([seed, epoch, 7]).permutation(n)[:samples]


def schedule_steps(job: dict) -> dict:
    """PolynomialDecay arguments: 0 -> target over the first half of training, then hold."""
    steps_per_epoch = -(-job["epoch_samples"] // job["batch_size"])
    total = job["epochs"] * steps_per_epoch
    frequency = job["frequency"]
    end_step = max(frequency, int(total * job["ramp"]) // frequency * frequency)
    return {"initial_sparsity": 0.0, "begin_step": 0, "end_step": end_step, "frequency": frequency, "power": 3}


def cell_name(model: str, sparsity: float, seed: int, tool: str) -> str:
    """File stem of one cell; sparsity 0 is the plain (unpruned) fine-tuning baseline."""
    return f"{model}_s{round(sparsity * 100):02d}_seed{seed}_{tool}"


def write_json(path: Path, data: dict) -> None:
    """Writes through a temporary file, so a killed run never leaves half a cell."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def machine() -> dict:
    """The machine a cell ran on, and how busy it was (other jobs make wall times noisy)."""
    import platform

    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "system": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(), "load_average_1min": os.getloadavg()[0]}


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def kernel_sparsity(kernels: list[np.ndarray]) -> float:
    """Fraction of zeros over all kernels (the weights both tools prune)."""
    total = sum(k.size for k in kernels)
    return 1.0 - sum(int(np.count_nonzero(k)) for k in kernels) / total


def negative_zeros(kernels: list[np.ndarray]) -> int:
    """Zeros stored as -0.0 (a weight times a 0 mask): they spoil gzip's runs of zero bytes."""
    return sum(int(np.count_nonzero((k == 0) & np.signbit(k))) for k in kernels)


def timer_callback(keras):
    """A callback class (for the given ``keras``) recording wall and CPU seconds per epoch."""

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds, self.cpu_seconds = [], []

        def on_epoch_begin(self, epoch, logs=None):
            self._start, self._cpu = time.perf_counter(), time.process_time()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self._start)
            self.cpu_seconds.append(time.process_time() - self._cpu)

    return EpochTimer()


def fine_tune(model, data: dict, job: dict, seed: int, callbacks: list, timer) -> None:
    """Fine-tunes for ``job['epochs']`` epochs, one ``fit`` per epoch on the shared order."""
    n = len(data["x_train"])
    for epoch in range(job["epochs"]):
        idx = epoch_indices(seed, epoch, n, job["epoch_samples"])
        model.fit(data["x_train"][idx], data["y_train"][idx], batch_size=job["batch_size"], epochs=1,
                  shuffle=False, callbacks=callbacks + [timer], verbose=0)


def saved_sizes(model, folder: Path) -> dict:
    """Bytes of ``model`` saved as .keras and .h5 (in the caller's Keras), each also gzipped at level 9."""
    row = {}
    for ext in ("keras", "h5"):
        path = folder / f"model.{ext}"
        model.save(path)
        raw = path.read_bytes()
        row[f"{ext}_bytes"], row[f"{ext}_gzip_bytes"] = len(raw), len(gzip.compress(raw, 9, mtime=0))
    return row


def load_weights_npz(path: Path) -> list[np.ndarray]:
    with np.load(path) as f:
        return [f[f"w{i}"] for i in range(len(f.files))]


def save_weights_npz(path: Path, weights: list[np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **{f"w{i}": w for i, w in enumerate(weights)})
    os.replace(tmp, path)
