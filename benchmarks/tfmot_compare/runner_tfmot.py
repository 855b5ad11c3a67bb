"""Runs one job of the comparison with tfmot on Keras 2 (``tf_keras``), in its own environment.

Usage (the harness calls it with ``TF_USE_LEGACY_KERAS=1`` in the tfmot virtualenv):
    benchmarks/.venv-tfmot/bin/python benchmarks/tfmot_compare/runner_tfmot.py JOB.json

Same job file, same cells and same measurements as ``runner_keras_prune.py``. keras-prune is
not installed here, so the stripped weights are saved next to the dense ones and the harness
measures their ``.kpsparse`` size in the main environment.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

if os.environ.get("TF_USE_LEGACY_KERAS") != "1":
    raise SystemExit("Run with TF_USE_LEGACY_KERAS=1 (tfmot needs tf.keras to be Keras 2).")

import tensorflow as tf  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402
import tf_keras as keras  # noqa: E402

import shared  # noqa: E402

sparsity_api = tfmot.sparsity.keras


def compile_model(model, learning_rate: float) -> None:
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])


def sizes(model, folder: Path) -> dict:
    """Bytes of the stripped model: .keras and .h5 (tf_keras formats), each gzipped at level 9."""
    copy = keras.models.clone_model(model)  # uncompiled: no optimizer state in the files
    copy.set_weights(model.get_weights())
    return shared.saved_sizes(copy, folder)


def run_cell(job: dict, data: dict, sparsity: float, weights_out: Path) -> dict:
    name, seed = job["model"], job["seed"]
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    model = shared.build_model(name, keras)
    model.set_weights(shared.load_weights_npz(Path(job["dense_npz"])))
    callbacks = []
    if sparsity > 0:
        schedule = sparsity_api.PolynomialDecay(final_sparsity=sparsity, **shared.schedule_steps(job))
        model = sparsity_api.prune_low_magnitude(model, pruning_schedule=schedule)
        callbacks = [sparsity_api.UpdatePruningStep()]
    compile_model(model, job["learning_rate"])
    timer = shared.timer_callback(keras)
    shared.fine_tune(model, data, job, seed, callbacks, timer)
    final = sparsity_api.strip_pruning(model) if sparsity > 0 else model
    logits = final.predict(data["x_test"], batch_size=1000, verbose=0)
    kernels = [layer.kernel.numpy() for layer in final.layers if hasattr(layer, "kernel")]
    shared.save_weights_npz(weights_out, final.get_weights())
    with tempfile.TemporaryDirectory() as folder:
        row = sizes(final, Path(folder))
    return {
        "tool": "tfmot", "model": name, "seed": seed, "sparsity": sparsity,
        "accuracy": shared.accuracy(logits, data["y_test"]), "kernel_sparsity": shared.kernel_sparsity(kernels),
        "negative_zeros": shared.negative_zeros(kernels),
        "epoch_seconds": timer.seconds, "epoch_cpu_seconds": timer.cpu_seconds, "machine": shared.machine(),
        "versions": {"tf_keras": keras.__version__, "tensorflow": tf.__version__,
                     "tfmot": tfmot.__version__}, **row,
    }


def main(job_path: str) -> None:
    warnings.filterwarnings("ignore", message=".*HDF5 file.*")  # the .h5 file is measured on purpose
    job = json.loads(Path(job_path).read_text())
    data = shared.load_data(Path(job["data_dir"]), job["model"])
    for sparsity in job["sparsities"]:
        stem = shared.cell_name(job["model"], sparsity, job["seed"], "tfmot")
        out = Path(job["cells_dir"]) / f"{stem}.json"
        if out.exists():
            continue
        cell = run_cell(job, data, sparsity, Path(job["weights_dir"]) / f"{stem}.npz")
        shared.write_json(out, {**cell, "budget": job["budget"]})
        print(f"tfmot {stem}: accuracy {cell['accuracy']:.4f}, "
              f"epoch {np.median(cell['epoch_seconds'][1:]):.2f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
