"""``export_litert``: a LiteRT (TFLite) flatbuffer with pruned weights in sparse encoding.

LiteRT conversion is TensorFlow-specific, so this module needs the TensorFlow backend.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np

from keras_prune.io import atomic_write, check_output_path


def _tensorflow():
    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            "LiteRT export needs the TensorFlow backend. Received: backend="
            f"{keras.backend.backend()!r}. Set KERAS_BACKEND=tensorflow before importing Keras."
        )
    import tensorflow as tf

    return tf


def convert_litert(model: keras.Model, *, sparse: bool = True) -> bytes:
    """Converts ``model`` to LiteRT flatbuffer bytes, sparse-encoding pruned weights.

    Example:
        >>> content = convert_litert(model)  # doctest: +SKIP
    """
    tf = _tensorflow()
    if not isinstance(model, keras.Model):
        raise TypeError(f"Argument `model` must be a Keras model. Received: model={model!r}")
    from keras_prune.export.sparse import _stripped

    converter = tf.lite.TFLiteConverter.from_keras_model(_stripped(model))
    if sparse:
        converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    with contextlib.redirect_stdout(io.StringIO()):  # the converter prints its SavedModel's signature
        return converter.convert()


def export_litert(
    model: keras.Model, path: str | os.PathLike, *, overwrite: bool = False, sparse: bool = True
) -> Path:
    """Writes ``model`` as a LiteRT (``.tflite``) file with the sparsity optimization.

    Pruned weights are stored in LiteRT's sparse tensor format. At run time, fully connected
    layers execute with sparse kernels; other layers are densified once when the interpreter
    loads the model (a smaller file, the usual speed). See ``docs/export.md``.

    Args:
        model: a Keras model (pruning wrappers are stripped first).
        path: the output file, ``.tflite`` by convention.
        overwrite: replace ``path`` if it exists.
        sparse: apply ``tf.lite.Optimize.EXPERIMENTAL_SPARSITY`` (``False`` gives the plain
            conversion, for comparisons).

    Returns:
        The path written.

    Example:
        >>> export_litert(model, "model.tflite")  # doctest: +SKIP
        PosixPath('model.tflite')
    """
    path = check_output_path(path, overwrite=overwrite)
    content = convert_litert(model, sparse=sparse)
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(content))


def _interpreter(content: bytes):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # TensorFlow still ships the deprecated tf.lite.Interpreter
        Interpreter = _tensorflow().lite.Interpreter
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Interpreter(model_content=content)


def run_litert(content: bytes, inputs: np.ndarray) -> np.ndarray:
    """Runs a single-input, single-output LiteRT model on a batch of ``inputs``.

    Example:
        >>> run_litert(convert_litert(model), x[:8]).shape  # doctest: +SKIP
        (8, 10)
    """
    inputs = np.asarray(inputs)
    return litert_function(content, inputs.shape)(inputs)


def litert_function(content: bytes, input_shape: tuple[int, ...]) -> Callable[[np.ndarray], np.ndarray]:
    """A single-input, single-output LiteRT model, loaded once and sized for ``input_shape``.

    Returns a function from an input batch of that shape to a copy of the model's output, for
    running the same model many times (latency measurements) without reloading it.

    Example:
        >>> run = litert_function(convert_litert(model), (1, 28, 28))  # doctest: +SKIP
        >>> run(x[:1]).shape  # doctest: +SKIP
        (1, 10)
    """
    interpreter = _interpreter(content)
    inputs_details, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    if len(inputs_details) != 1 or len(outputs) != 1:
        raise ValueError(
            "LiteRT runs here need single-input, single-output models. Received a model "
            f"with {len(inputs_details)} inputs and {len(outputs)} outputs."
        )
    input_index, output_index = inputs_details[0]["index"], outputs[0]["index"]
    dtype = inputs_details[0]["dtype"]
    interpreter.resize_tensor_input(input_index, tuple(input_shape))
    interpreter.allocate_tensors()

    def run(inputs: np.ndarray) -> np.ndarray:
        interpreter.set_tensor(input_index, np.asarray(inputs, dtype=dtype))
        interpreter.invoke()
        return interpreter.get_tensor(output_index).copy()

    return run


def litert_max_abs_diff(model: keras.Model, content: bytes, inputs: np.ndarray) -> float:
    """The largest absolute difference between Keras and LiteRT outputs on ``inputs``."""
    expected = keras.ops.convert_to_numpy(model(inputs, training=False))
    return float(np.max(np.abs(run_litert(content, inputs) - expected)))


def litert_ops(content: bytes) -> list[str]:
    """The operator names of a LiteRT model in execution order (``DENSIFY`` marks weights
    that are stored sparse but expanded to dense when the interpreter loads the model)."""
    interpreter = _interpreter(content)
    return [op["op_name"] for op in interpreter._get_ops_details()]
