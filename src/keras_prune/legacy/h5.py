"""Reading Keras 2 HDF5 files: the Keras version that wrote them, the model config, and the
weights of each layer in the order Keras 2 saved them.

Layout (tf.keras 2.x and standalone Keras 2.x alike): the root attributes ``keras_version``,
``backend`` and ``model_config`` (JSON); a ``model_weights`` group (the root itself in a file
of ``save_weights``) whose attribute ``layer_names`` lists the layers, each a group whose
attribute ``weight_names`` lists its weights, trainable first.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from keras_prune.io import ModelFileError


def attribute(group: h5py.Group, name: str):
    """The attribute ``name`` of ``group`` as text or a list of text, joined from the numbered
    chunks (``name0``, ``name1``...) Keras writes when it is too large for one attribute."""
    if name in group.attrs:
        return _text(group.attrs[name])
    chunks, index = [], 0
    while f"{name}{index}" in group.attrs:
        chunks.extend(_text(group.attrs[f"{name}{index}"]))
        index += 1
    return chunks if index else None


def _text(value):
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return [_text(item) for item in value.tolist()]
    return value


def keras_version(path: Path) -> str | None:
    """The ``keras_version`` an HDF5 model or weights file records, or ``None``."""
    with h5py.File(path, "r") as file:
        version = attribute(file, "keras_version")
        if version is None and "model_weights" in file:
            version = attribute(file["model_weights"], "keras_version")
    return version if isinstance(version, str) else None


def is_legacy_model(path: Path) -> bool:
    """Whether ``path`` is a full model written by Keras 1 or 2 (not by Keras 3)."""
    try:
        with h5py.File(path, "r") as file:
            has_config = "model_config" in file.attrs
    except OSError:
        return False  # not HDF5: keras.saving reports it
    version = keras_version(path)
    return has_config and not (version or "").startswith("3.")


def is_weights_only(path: Path) -> bool:
    """Whether ``path`` is a Keras 2 ``save_weights`` file (layer weights, no model config)."""
    try:
        with h5py.File(path, "r") as file:
            return "model_config" not in file.attrs and attribute(file, "layer_names") is not None
    except OSError:
        return False


def model_config(path: Path) -> dict:
    """The ``model_config`` of a full-model HDF5 file, parsed."""
    with h5py.File(path, "r") as file:
        text = attribute(file, "model_config")
    if not isinstance(text, str):
        raise ModelFileError(f"'{path}' holds no model config; it is a weights file, not a model.")
    return json.loads(text)


def training_config(path: Path) -> dict | None:
    """The compile settings a full-model HDF5 file records (``training_config``), parsed."""
    with h5py.File(path, "r") as file:
        text = attribute(file, "training_config")
    return json.loads(text) if isinstance(text, str) else None


def backend(path: Path) -> str | None:
    """The Keras 2 backend that wrote ``path`` (``tensorflow``, ``theano``, ``cntk``), if recorded."""
    with h5py.File(path, "r") as file:
        group = file["model_weights"] if "model_weights" in file else file
        value = attribute(group, "backend") or attribute(file, "backend")
    return value if isinstance(value, str) else None


def layer_weights(path: Path) -> dict[str, list[np.ndarray]] | None:
    """``{layer name: its saved arrays}`` for the layers with weights, or ``None`` when the
    file does not have the Keras 2 layout (a Keras 3 ``.weights.h5``)."""
    with h5py.File(path, "r") as file:
        group = file["model_weights"] if "model_weights" in file else file
        names = attribute(group, "layer_names")
        if names is None:
            return None
        weights = {}
        for name in names:
            arrays = [np.asarray(group[name][weight]) for weight in attribute(group[name], "weight_names") or []]
            if arrays:
                weights[name] = arrays
    return weights
