"""``export_sparse`` / ``load_sparse``: a pruned model in a file where zeros cost almost nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import keras
import numpy as np

from keras_prune._validation import check_choice
from keras_prune.export import format as fmt
from keras_prune.export.encodings import ENCODING_VERSIONS, ENCODINGS, VALUE_MODES, decode_tensor, encode_tensor
from keras_prune.export.format import SparseFormatError, require
from keras_prune.io import atomic_write, check_output_path


def export_sparse(
    model: keras.Model,
    path: str | os.PathLike,
    *,
    values: str = "float32",
    overwrite: bool = False,
) -> Path:
    """Writes ``model`` in the compact ``.kpsparse`` format: architecture + sparse weights.

    Each weight tensor is stored the smallest of several exact ways (dense, bitmask, gap
    coded positions, N:M metadata, or, for a tensor with at most 256 distinct nonzero values
    such as a clustered kernel or the int8 kernel of a Keras-quantized layer, a codebook plus
    rANS-coded symbols), then compressed where that pays. Pruning wrappers are stripped
    first. The optimizer state and compile settings are not stored. A model quantized with
    Keras' ``model.quantize("int8")`` (or ``"int4"``) is stored as it is: its integer kernels
    and scales exactly, and it loads back quantized.

    Args:
        model: a Sequential or functional Keras model (or one being pruned).
        path: the output file; ``.kpsparse`` by convention.
        values: ``"float32"`` stores every value exactly (bit-exact round trip);
            ``"float16"`` halves float kernels; ``"int8"`` stores float kernels as int8 with
            one scale per output channel. Biases and other rank-1 tensors, and every weight
            of a layer Keras has already quantized, stay exact.
        overwrite: replace ``path`` if it exists.

    Returns:
        The path written.

    Example:
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        >>> export_sparse(model, "model.kpsparse")  # doctest: +SKIP
        PosixPath('model.kpsparse')
    """
    check_choice("values", values, VALUE_MODES)
    if not isinstance(model, keras.Model):
        raise TypeError(f"Argument `model` must be a Keras model. Received: model={model!r}")
    model = _stripped(model)
    architecture = _architecture(model)
    path = check_output_path(path, overwrite=overwrite)
    content = sparse_bytes(model, values, architecture=architecture)
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(content))


def sparse_bytes(
    model: keras.Model, values: str = "float32", *, encodings: tuple[str, ...] = ENCODINGS, architecture: dict | None = None
) -> bytes:
    """The ``.kpsparse`` bytes of a stripped ``model``; ``encodings`` limits the tensor encodings.

    The container takes the oldest version with every encoding used: 1, or 2 with the
    ``codebook`` encoding, or 3 with ``codebook_rows``.
    """
    architecture = _architecture(model) if architecture is None else architecture
    exact = _quantized_weights(model)
    tensors, blobs, offset = [], [], 0
    for variable in model.weights:
        mode = "float32" if id(variable) in exact else values
        entry, parts = encode_tensor(keras.ops.convert_to_numpy(variable.value), mode, encodings=encodings)
        entry["path"], entry["blobs"] = variable.path, {}
        for name, meta, data in parts:
            entry["blobs"][name] = {**meta, "offset": offset}
            blobs.append(data)
            offset += len(data)
        tensors.append(entry)
    header = {"architecture": architecture, "keras_version": keras.__version__, "values": values, "tensors": tensors}
    version = max(ENCODING_VERSIONS.get(t["encoding"], 1) for t in tensors) if tensors else 1
    return fmt.write_container(header, b"".join(blobs), version)


def _quantized_weights(model: keras.Model) -> set[int]:
    """ids of the weights of layers Keras has quantized (int8 kernels, their scales, zero points):
    they are stored exactly whatever ``values`` says, since the layer computes with them as they are."""
    from keras_prune._keras_compat import all_layers

    exact = set()
    for layer in all_layers(model):
        policy = getattr(layer, "dtype_policy", None)
        if getattr(policy, "quantization_mode", None):
            exact.update(id(w) for w in layer.weights)
    return exact


def encoding_summary(path: str | os.PathLike) -> dict[str, int]:
    """How many tensors of a ``.kpsparse`` file use each encoding, most used first.

    Example:
        >>> encoding_summary("model.kpsparse")  # doctest: +SKIP
        {'codebook': 2, 'gaps': 2, 'dense': 1}
    """
    counts: dict[str, int] = {}
    for tensor in read_header(path)["tensors"]:
        counts[tensor["encoding"]] = counts.get(tensor["encoding"], 0) + 1
    return dict(sorted(counts.items(), key=lambda item: -item[1]))


def load_sparse(path: str | os.PathLike, *, safe_mode: bool = True) -> keras.Model:
    """Loads a ``.kpsparse`` file written by :func:`export_sparse` as an uncompiled Keras model.

    The reader checks every length, offset and shape against the file's size before it
    allocates anything, never uses pickle, and refuses code (Lambda layers) in safe mode.

    Args:
        path: the ``.kpsparse`` file.
        safe_mode: refuse architectures that carry code; pass ``False`` only for trusted files.

    Raises:
        SparseFormatError: the file is truncated, corrupted, crafted, or of an unknown version.

    Example:
        >>> model = load_sparse("model.kpsparse")  # doctest: +SKIP
    """
    data = Path(path).read_bytes()
    header, payload = fmt.read_container(data)
    architecture, tensors = header.get("architecture"), header.get("tensors")
    require(isinstance(architecture, dict), "the header lacks the model architecture")
    require(isinstance(tensors, list), "the header lacks the tensor table")
    version = fmt.PREFIX.unpack_from(data)[1]
    for tensor in tensors:
        needed = ENCODING_VERSIONS.get(tensor.get("encoding"), 1) if isinstance(tensor, dict) else 1
        require(needed <= version, f"a version {version} file uses the version {needed} {tensor['encoding']} encoding")
    arrays = [decode_tensor(entry, payload) for entry in tensors]
    return _build(architecture, arrays, safe_mode)


def format_version(path: str | os.PathLike) -> int:
    """The container version of a ``.kpsparse`` file (1; 2 or 3 with the entropy-coded encodings).

    Example:
        >>> format_version("model.kpsparse")  # doctest: +SKIP
        2
    """
    data = Path(path).read_bytes()
    fmt.read_container(data)  # checked like every read
    return int(fmt.PREFIX.unpack_from(data)[1])


def read_header(path: str | os.PathLike) -> dict:
    """The checked header of a ``.kpsparse`` file (architecture, tensor table), no weights."""
    return fmt.read_container(Path(path).read_bytes())[0]


def _stripped(model: keras.Model) -> keras.Model:
    """``model`` without pruning state (the export formats store plain layers), leaving it as it is.

    A :class:`keras_prune.PrunedModel` hands out the model it prunes, still pruned (its
    zeros are in the variables), and a :class:`keras_prune.ClusteredModel` the model it
    clusters (its weights are on their centroids); a model with tfmot-style wrappers is
    cloned without them.
    """
    from keras_prune.callbacks import collect_pruning
    from keras_prune.clustering import ClusteredModel

    if isinstance(model, ClusteredModel):
        return _stripped(model.layer)
    from keras_prune.prune import strip_pruning
    from keras_prune.traversal import unwrap

    if unwrap(model) is not model:
        return unwrap(model)
    return strip_pruning(model) if collect_pruning(model) else model


def _architecture(model: keras.Model) -> dict:
    try:
        architecture = json.loads(model.to_json())
    except (NotImplementedError, TypeError) as error:
        raise TypeError(
            "export_sparse needs a model whose architecture serializes: a Sequential or "
            "functional model, or a subclassed model with `get_config`. "
            f"Received: model={type(model).__name__} ({error})"
        ) from error
    architecture.pop("compile_config", None)  # the format stores no optimizer or compile state
    return architecture


def _build(architecture: dict, arrays: list[np.ndarray], safe_mode: bool) -> keras.Model:
    """Builds the architecture without allocating weights, checks them, then fills them in.

    Inside a ``StatelessScope`` Keras defers variable initialization, so a crafted
    architecture that claims huge layers costs nothing until its shapes are checked.
    """
    from keras_prune._keras_compat import deferred_variables, initialize_deferred

    # A refused model's variables are never initialized.
    with deferred_variables() as ours:
        with keras.StatelessScope(initialize_variables=False):
            model = _deserialize(architecture, safe_mode)
        _check_weights(model, arrays)
    # Shapes are justified by the file: initialize them (ours only) and fill them in.
    for variable in ours:
        initialize_deferred(variable)
    for variable, array in zip(model.weights, arrays):
        variable.assign(array)
    return model


def _deserialize(architecture: dict, safe_mode: bool) -> keras.Model:
    try:
        model = keras.saving.deserialize_keras_object(architecture, safe_mode=safe_mode)
    except Exception as error:
        if safe_mode and "safe_mode" in str(error):
            raise SparseFormatError(
                "The sparse model's architecture contains code (for example a Lambda layer), "
                "which safe mode refuses to run. Pass safe_mode=False (CLI: --unsafe) only if "
                "you trust the file."
            ) from error
        raise SparseFormatError(f"Invalid sparse model file: bad architecture ({error}).") from error
    require(isinstance(model, keras.Model), "the architecture is not a Keras model")
    return model


def _check_weights(model: keras.Model, arrays: list[np.ndarray]) -> None:
    weights = model.weights
    require(len(weights) == len(arrays), f"the architecture has {len(weights)} weights, the file {len(arrays)}")
    for variable, array in zip(weights, arrays):
        expected = (tuple(variable.shape), keras.backend.standardize_dtype(variable.dtype))
        require(expected == (array.shape, array.dtype.name), f"weight {variable.path} is {expected}, the file has {(array.shape, array.dtype.name)}")
