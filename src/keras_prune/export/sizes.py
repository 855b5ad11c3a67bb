"""What a model costs on disk in each format, measured by writing the files."""

from __future__ import annotations

import gzip
import tempfile
from pathlib import Path

import keras

from keras_prune.export.sparse import _architecture, _stripped, export_sparse

FORMATS = {
    "keras": ".keras file (no optimizer state)",
    "keras_gzip": ".keras file, gzip -9",
    "sparse": ".kpsparse, float32 (lossless)",
    "sparse_float16": ".kpsparse, float16 kernels",
    "sparse_int8": ".kpsparse, int8 kernels",
    "litert": "LiteRT .tflite, sparsity optimization",
}


def plain_copy(model: keras.Model) -> keras.Model:
    """The model without pruning state, optimizer or compile state (what gets shipped)."""
    model = _stripped(model)
    try:
        architecture = _architecture(model)
    except TypeError:  # a subclassed model without a config: measure it as it is
        return model
    copy = keras.saving.deserialize_keras_object(architecture, safe_mode=False)
    copy.set_weights(model.get_weights())
    return copy


def file_sizes(model: keras.Model, *, litert: bool = True) -> dict[str, int]:
    """Bytes of ``model`` in every format of :data:`FORMATS` (LiteRT only if ``litert``).

    Example:
        >>> file_sizes(model, litert=False)["sparse"]  # doctest: +SKIP
        104857
    """
    model = plain_copy(model)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        model.save(folder / "model.keras")
        data = (folder / "model.keras").read_bytes()
        sizes = {"keras": len(data), "keras_gzip": len(gzip.compress(data, 9, mtime=0))}
        for key, values in (("sparse", "float32"), ("sparse_float16", "float16"), ("sparse_int8", "int8")):
            sizes[key] = export_sparse(model, folder / f"{key}.kpsparse", values=values).stat().st_size
    if litert:
        from keras_prune.export.litert import convert_litert

        sizes["litert"] = len(convert_litert(model))
    return sizes
