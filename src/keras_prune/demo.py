"""The main job, end to end on data shipped with the package: train, prune gradually, measure.

:func:`run_demo` trains LeNet-300-100 (784-300-100-10, ReLU) on the embedded MNIST subset,
fine-tunes it while :class:`~keras_prune.schedules.PolynomialDecay` raises the sparsity of
every Dense kernel to the target, strips the pruning state and compares the dense and the
pruned model: test accuracy, sparsity, and the bytes of their ``.keras`` files, raw and gzipped
and in the compact ``.kpsparse`` format of :func:`keras_prune.export_sparse`.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.resources
import json
import math
import tempfile
import time
from pathlib import Path

import keras
import numpy as np

from keras_prune import registry
from keras_prune._validation import check_int, check_sparsity
from keras_prune.io import atomic_write

DATA_FILE = "mnist_subset.npz"
DENSE_FILE, PRUNED_FILE, SPARSE_FILE, RESULT_FILE = (
    "dense.keras", "pruned.keras", "pruned.kpsparse", "demo.json",
)
OUTPUT_FILES = (DENSE_FILE, PRUNED_FILE, SPARSE_FILE, RESULT_FILE)


@dataclasses.dataclass(frozen=True)
class ModelStats:
    """What one model measures: test accuracy, sparsity of its prunable weights, bytes."""

    accuracy: float
    sparsity: float
    nonzero_weights: int
    prunable_weights: int
    keras_bytes: int
    gzip_bytes: int


@dataclasses.dataclass(frozen=True)
class DemoResult:
    """The outcome of :func:`run_demo`.

    Attributes:
        dense: the trained model before pruning.
        pruned: the pruned, fine-tuned and stripped model.
        target_sparsity: the sparsity asked for.
        sparse_bytes: size of the pruned model in the compact ``.kpsparse`` format.
        output_dir: where the model files and ``demo.json`` were written.
        seconds: wall-clock time of the whole run.
    """

    dense: ModelStats
    pruned: ModelStats
    target_sparsity: float
    sparse_bytes: int
    output_dir: Path
    seconds: float

    def to_json(self) -> dict:
        """A JSON-ready dict of every figure."""
        result = dataclasses.asdict(self)
        result["output_dir"] = str(self.output_dir)
        return result


def load_demo_data() -> dict[str, np.ndarray]:
    """The embedded MNIST subset: 6,000 training and 1,000 test images, balanced by class.

    Returns the same layout as :func:`keras_prune.datasets.load_idx_dataset`: ``x_*`` float32
    in [0, 1] of shape (n, 28, 28), ``y_*`` int64. See ``keras_prune/data/README.md`` for how
    the subset was cut and its license (CC BY-SA 3.0).

    Example:
        >>> load_demo_data()["x_train"].shape
        (6000, 28, 28)
    """
    resource = importlib.resources.files("keras_prune") / "data" / DATA_FILE
    with resource.open("rb") as f, np.load(f) as arrays:
        data = {key: arrays[key] for key in ("x_train", "y_train", "x_test", "y_test")}
    for key in ("x_train", "x_test"):
        data[key] = data[key].astype("float32") / 255.0
    for key in ("y_train", "y_test"):
        data[key] = data[key].astype("int64")
    return data


def lenet_300_100(seed: int = 0) -> keras.Model:
    """LeNet-300-100: 28x28 images -> 300 -> 100 -> 10 logits, ReLU, seeded initializers."""
    init = lambda offset: keras.initializers.GlorotUniform(seed=seed + offset)  # noqa: E731
    return keras.Sequential(
        [
            keras.Input((28, 28)),
            keras.layers.Flatten(),
            keras.layers.Dense(300, activation="relu", kernel_initializer=init(0), name="fc1"),
            keras.layers.Dense(100, activation="relu", kernel_initializer=init(1), name="fc2"),
            keras.layers.Dense(10, kernel_initializer=init(2), name="logits"),
        ],
        name="lenet_300_100",
    )


def prepare_output_dir(output_dir: str | Path | None, overwrite: bool = False) -> Path:
    """Returns the folder to write into: a new temporary one, or ``output_dir`` once checked.

    ``output_dir`` is created if missing; if it already holds one of the demo's files, this
    raises unless ``overwrite`` is set, so nothing is replaced silently.
    """
    if output_dir is None:
        return Path(tempfile.mkdtemp(prefix="keras-prune-demo-"))
    folder = Path(output_dir)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"Output '{folder}' is a file, not a folder; choose another --output-dir.")
    existing = [name for name in OUTPUT_FILES if (folder / name).exists()]
    if existing and not overwrite:
        raise ValueError(
            f"Output folder '{folder}' already holds {', '.join(existing)}; "
            "pass --overwrite (overwrite=True) to replace them, or choose another folder."
        )
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def pruning_schedule(sparsity: float, total_steps: int):
    """PolynomialDecay from 0 to ``sparsity`` over the first two thirds of fine-tuning.

    At most 21 mask updates; the end step is a multiple of the frequency so the last update
    lands exactly on the target. The remaining third lets the kept weights recover.
    """
    from keras_prune.schedules import PolynomialDecay

    ramp = max(1, (2 * total_steps) // 3)
    frequency = math.ceil(ramp / 20)
    end_step = max(frequency, ramp - ramp % frequency)
    return PolynomialDecay(0.0, sparsity, begin_step=0, end_step=end_step, frequency=frequency)


def run_demo(
    epochs: int = 10,
    prune_epochs: int = 10,
    sparsity: float = 0.9,
    output_dir: str | Path | None = None,
    *,
    overwrite: bool = False,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = True,
) -> DemoResult:
    """Trains LeNet-300-100 on the embedded MNIST subset, prunes it gradually, measures both.

    Seeds Keras, NumPy and Python's random module with ``seed`` (this changes global RNG state,
    as ``keras.utils.set_random_seed`` does), so a run is repeatable.

    Args:
        epochs: epochs of dense training.
        prune_epochs: epochs of fine-tuning while pruning (masks ramp up over the first 2/3).
        sparsity: fraction of each Dense kernel to prune, in [0, 1).
        output_dir: folder for ``dense.keras``, ``pruned.keras``, ``pruned.kpsparse`` and
            ``demo.json``; a new temporary folder when ``None``.
        overwrite: replace the demo's files if ``output_dir`` already holds them.
        batch_size: training batch size.
        seed: the random seed.
        progress: show a rich progress bar while training.

    Returns:
        A :class:`DemoResult` with the dense and pruned figures.

    Example:
        >>> result = run_demo(epochs=1, prune_epochs=2, sparsity=0.8, progress=False)
        >>> round(result.pruned.sparsity, 2)
        0.8
    """
    sparsity = check_sparsity("sparsity", sparsity)
    check_int("epochs", epochs, minimum=1)
    check_int("prune_epochs", prune_epochs, minimum=1)
    check_int("batch_size", batch_size, minimum=1)
    check_int("seed", seed, minimum=0)
    folder = prepare_output_dir(output_dir, overwrite)

    from keras_prune.callbacks import UpdatePruningStep
    from keras_prune.prune import prune_low_magnitude, strip_pruning

    start = time.perf_counter()
    keras.utils.set_random_seed(seed)
    data = load_demo_data()
    fit = _Trainer(data, batch_size, progress)

    dense = lenet_300_100(seed)
    _compile(dense, learning_rate=1e-3)
    fit(dense, epochs, "training dense model")
    dense_stats = measure(dense, data, folder / DENSE_FILE)

    steps = prune_epochs * math.ceil(len(data["x_train"]) / batch_size)
    pruned = prune_low_magnitude(dense, pruning_schedule=pruning_schedule(sparsity, steps))
    _compile(pruned, learning_rate=5e-4)
    fit(pruned, prune_epochs, f"pruning to {sparsity:.0%}", [UpdatePruningStep()])
    stripped = strip_pruning(pruned)
    pruned_stats = measure(stripped, data, folder / PRUNED_FILE)

    result = DemoResult(
        dense=dense_stats,
        pruned=pruned_stats,
        target_sparsity=sparsity,
        sparse_bytes=_sparse_bytes(stripped, folder / SPARSE_FILE),
        output_dir=folder,
        seconds=time.perf_counter() - start,
    )
    atomic_write(folder / RESULT_FILE, lambda tmp: Path(tmp).write_text(json.dumps(result.to_json(), indent=2)))
    return result


def measure(model: keras.Model, data: dict[str, np.ndarray], path: Path) -> ModelStats:
    """Tests ``model``, saves it for deployment to ``path`` (atomically) and measures the file.

    The file holds the architecture and weights only: optimizer state would triple the dense
    file and say nothing about pruning.
    """
    logits = model.predict(data["x_test"], batch_size=256, verbose=0)
    accuracy = float(np.mean(np.argmax(logits, axis=-1) == data["y_test"]))
    nonzero, total = count_prunable(model)
    deployable = type(model).from_config(model.get_config())  # uncompiled, unlike clone_model
    deployable.set_weights(model.get_weights())
    atomic_write(path, lambda tmp: deployable.save(tmp))
    raw = path.read_bytes()
    return ModelStats(
        accuracy=accuracy,
        sparsity=1.0 - nonzero / total,
        nonzero_weights=nonzero,
        prunable_weights=total,
        keras_bytes=len(raw),
        gzip_bytes=len(gzip.compress(raw, compresslevel=9, mtime=0)),
    )


def count_prunable(model: keras.Model) -> tuple[int, int]:
    """``(nonzero, total)`` over the weights pruning may zero in the layers of ``model``."""
    nonzero = total = 0
    for layer in model.layers:
        if registry.has_rule(layer):
            for weight in registry.prunable_weights(layer):
                values = keras.ops.convert_to_numpy(weight)
                nonzero += int(np.count_nonzero(values))
                total += values.size
    return nonzero, total


def _compile(model: keras.Model, learning_rate: float) -> None:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def _sparse_bytes(model: keras.Model, path: Path) -> int:
    """Size of ``model`` in the compact sparse format (exact float32 values)."""
    from keras_prune.export import export_sparse

    export_sparse(model, path, overwrite=True)  # the folder was checked before training
    return path.stat().st_size


class _Trainer:
    """Runs ``fit`` on the demo data with one rich progress bar per phase."""

    def __init__(self, data: dict[str, np.ndarray], batch_size: int, progress: bool):
        self.data, self.batch_size, self.progress = data, batch_size, progress

    def __call__(self, model: keras.Model, epochs: int, title: str, callbacks=()) -> None:
        callbacks = list(callbacks)
        if self.progress:
            steps = math.ceil(len(self.data["x_train"]) / self.batch_size)
            callbacks.append(_RichProgress(title, epochs * steps))
        model.fit(
            self.data["x_train"], self.data["y_train"],
            batch_size=self.batch_size, epochs=epochs, callbacks=callbacks, verbose=0,
        )


class _RichProgress(keras.callbacks.Callback):
    """A rich progress bar over all batches of a ``fit`` call, with epoch, loss and accuracy."""

    def __init__(self, title: str, total_steps: int):
        super().__init__()
        self.title, self.total_steps = title, total_steps

    def on_train_begin(self, logs=None):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(
            TextColumn("{task.description:<20}"), BarColumn(bar_width=20), MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"), TimeElapsedColumn(), transient=False,
        )
        self.bar.start()
        self.task = self.bar.add_task(self.title, total=self.total_steps, status="")

    def on_train_batch_end(self, batch, logs=None):
        self.bar.advance(self.task)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        status = f"epoch {epoch + 1}  loss {logs.get('loss', float('nan')):.3f}  acc {logs.get('accuracy', float('nan')):.3f}"
        self.bar.update(self.task, status=status)

    def on_train_end(self, logs=None):
        self.bar.stop()
