"""What a model costs on disk in each format, measured by writing the files."""

from __future__ import annotations

import gzip
import tempfile
import warnings
from pathlib import Path

import keras

from keras_prune.export.encodings import CODEBOOKS, ENCODINGS
from keras_prune.export.sparse import _architecture, _stripped, export_sparse, read_header, sparse_bytes

FORMATS = {
    "keras": ".keras file (no optimizer state)",
    "keras_gzip": ".keras file, gzip -9",
    "sparse": ".kpsparse, float32 (lossless)",
    "sparse_no_codebook": ".kpsparse, float32, no codebook/ANS coding",
    "sparse_float16": ".kpsparse, float16 kernels",
    "sparse_int8": ".kpsparse, int8 kernels",
    "keras_int8": 'model.quantize("int8"), then .kpsparse',
    "litert": "LiteRT .tflite, sparsity optimization",
}
# Rows that appear only when they say something: "sparse_no_codebook" when the lossless file
# codes some tensor as a codebook (a clustered model), "keras_int8" when Keras' own int8
# quantization applies to some layer (Dense, EinsumDense, Embedding, ...).
OPTIONAL = ("sparse_no_codebook", "keras_int8", "litert")


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


def file_sizes(model: keras.Model, *, litert: bool = True, quantized: bool = True) -> dict[str, int]:
    """Bytes of ``model`` in every format of :data:`FORMATS` (LiteRT only if ``litert``).

    ``sparse`` codes clustered tensors (at most 256 distinct nonzero values) as a codebook
    plus rANS-coded symbols; if any tensor is stored so, ``sparse_no_codebook`` gives the
    same file without that encoding. With ``quantized``, ``keras_int8`` is the size of a
    copy quantized by Keras' ``model.quantize("int8")`` and stored sparsely (left out when
    Keras quantizes none of its layers).

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
        sizes["sparse"] = export_sparse(model, folder / "sparse.kpsparse").stat().st_size
        if any(t["encoding"] in CODEBOOKS for t in read_header(folder / "sparse.kpsparse")["tensors"]):
            others = tuple(e for e in ENCODINGS if e not in CODEBOOKS)
            sizes["sparse_no_codebook"] = len(sparse_bytes(model, encodings=others))
        for key, values in (("sparse_float16", "float16"), ("sparse_int8", "int8")):
            sizes[key] = export_sparse(model, folder / f"{key}.kpsparse", values=values).stat().st_size
    if quantized:
        sizes.update(keras_int8_size(model))
    if litert:
        from keras_prune.export.litert import convert_litert

        sizes["litert"] = len(convert_litert(model))
    return sizes


def keras_int8_size(model: keras.Model) -> dict[str, int]:
    """``{"keras_int8": bytes}`` of a copy of ``model`` quantized by Keras (int8 kernels and
    scales, stored by :func:`~keras_prune.export_sparse` as they are), or ``{}`` when Keras
    quantizes none of its layers. ``model`` itself is left as it is."""
    from keras_prune._keras_compat import all_layers

    copy = plain_copy(model)
    if copy is _stripped(model):  # no config to copy from: never quantize the caller's model
        return {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Layer X does not have a `quantize` method"
            copy.quantize("int8")
    except (ValueError, TypeError, NotImplementedError):
        return {}
    if not any(getattr(getattr(layer, "dtype_policy", None), "quantization_mode", None) for layer in all_layers(copy)):
        return {}
    return {"keras_int8": len(sparse_bytes(copy))}
