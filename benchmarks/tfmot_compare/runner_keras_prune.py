"""Runs one job of the comparison with keras-prune (Keras 3), or pretrains the dense model.

Usage (the harness calls it; by hand only to debug):
    .venv/bin/python benchmarks/tfmot_compare/runner_keras_prune.py JOB.json [keras_prune_global]

The job file says the model, the seed, the sparsities (0 = plain fine-tuning, no pruning) and
the training budget. Each finished cell is written at once as JSON; cells already written are
skipped. With ``"pretrain": true`` it trains the dense model instead and saves its weights.
The tool ``keras_prune_global`` ranks all kernels together (``scope="global"``); its plain
fine-tuning would repeat keras_prune's, so it skips sparsity 0.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from pathlib import Path

import keras
import numpy as np

import keras_prune
from keras_prune.export.sizes import plain_copy

import shared


def compile_model(model, learning_rate: float) -> None:
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])


def pretrain(job: dict, data: dict) -> None:
    """Trains the dense model from a seeded initialization; saves weights and test accuracy."""
    name, seed = job["model"], job["seed"]
    keras.utils.set_random_seed(seed)
    model = shared.build_model(name, keras)
    compile_model(model, 1e-3)
    model.fit(data["x_train"], data["y_train"], batch_size=job["batch_size"], epochs=job["pretrain_epochs"],
              shuffle=True, verbose=0)
    logits = model.predict(data["x_test"], batch_size=1000, verbose=0)
    shared.save_weights_npz(Path(job["dense_npz"]), model.get_weights())
    shared.write_json(Path(job["dense_json"]), {
        "model": name, "seed": seed, "accuracy": shared.accuracy(logits, data["y_test"]),
        "weights": int(model.count_params()), "epochs": job["pretrain_epochs"], "keras": keras.__version__,
    })


def sizes(model, folder: Path) -> dict:
    """Bytes of the stripped model: .keras, .h5, each gzipped at level 9, and .kpsparse."""
    model = plain_copy(model)
    row = shared.saved_sizes(model, folder)
    row["sparse_bytes"] = keras_prune.export_sparse(model, folder / "model.kpsparse").stat().st_size
    return row


def run_cell(job: dict, data: dict, sparsity: float, tool: str) -> dict:
    name, seed = job["model"], job["seed"]
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    model = shared.build_model(name, keras)
    model.set_weights(shared.load_weights_npz(Path(job["dense_npz"])))
    callbacks = []
    if sparsity > 0:
        schedule = keras_prune.PolynomialDecay(final_sparsity=sparsity, **shared.schedule_steps(job))
        scope = "global" if tool == "keras_prune_global" else "layer"
        model = keras_prune.prune_low_magnitude(model, pruning_schedule=schedule, scope=scope)
        callbacks = [keras_prune.UpdatePruningStep()]
    compile_model(model, job["learning_rate"])
    timer = shared.timer_callback(keras)
    shared.fine_tune(model, data, job, seed, callbacks, timer)
    final = keras_prune.strip_pruning(model) if sparsity > 0 else model
    logits = final.predict(data["x_test"], batch_size=1000, verbose=0)
    kernels = [keras.ops.convert_to_numpy(layer.kernel) for layer in final.layers if hasattr(layer, "kernel")]
    with tempfile.TemporaryDirectory() as folder:
        row = sizes(final, Path(folder))
    return {
        "tool": tool, "model": name, "seed": seed, "sparsity": sparsity,
        "accuracy": shared.accuracy(logits, data["y_test"]), "kernel_sparsity": shared.kernel_sparsity(kernels),
        "negative_zeros": shared.negative_zeros(kernels),
        "epoch_seconds": timer.seconds, "epoch_cpu_seconds": timer.cpu_seconds, "machine": shared.machine(),
        "versions": {"keras": keras.__version__, "keras_prune": keras_prune.__version__}, **row,
    }


def main(job_path: str, tool: str = "keras_prune") -> None:
    logging.getLogger("absl").setLevel(logging.ERROR)  # the .h5 file is measured on purpose
    job = json.loads(Path(job_path).read_text())
    data = shared.load_data(Path(job["data_dir"]), job["model"])
    if job.get("pretrain"):
        pretrain(job, data)
        return
    for sparsity in job["sparsities"]:
        out = Path(job["cells_dir"]) / f"{shared.cell_name(job['model'], sparsity, job['seed'], tool)}.json"
        if out.exists() or (sparsity == 0 and tool != "keras_prune"):
            continue
        cell = run_cell(job, data, sparsity, tool)
        shared.write_json(out, {**cell, "budget": job["budget"]})
        print(f"{tool} {out.stem}: accuracy {cell['accuracy']:.4f}, "
              f"epoch {np.median(cell['epoch_seconds'][1:]):.2f} s", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
