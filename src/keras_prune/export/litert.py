"""``export_litert``: a LiteRT (TFLite) flatbuffer with pruned weights in sparse encoding.

LiteRT conversion is TensorFlow-specific, so this module needs the TensorFlow backend.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np

from keras_prune.io import atomic_write, check_output_path, error_summary

# Dtype policies whose computations LiteRT's built-in kernels cannot run as saved: a model
# using them is converted as a float32 copy (its variables are float32 already, or exactly
# representable in float32).
HALF_POLICIES = ("mixed_float16", "mixed_bfloat16", "float16", "bfloat16")


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

    Pruning wrappers are stripped first. A mixed-precision model (``mixed_float16``,
    ``mixed_bfloat16``) is converted as a float32 copy with the same weights, because LiteRT's
    built-in kernels do not run float16 computations.

    Raises:
        ValueError: the conversion failed; the message says why in one line (for example
            the TensorFlow ops LiteRT lacks), and the converter's own report is the cause.

    Example:
        >>> content = convert_litert(model)  # doctest: +SKIP
    """
    tf = _tensorflow()
    if not isinstance(model, keras.Model):
        raise TypeError(f"Argument `model` must be a Keras model. Received: model={model!r}")
    from keras_prune.export.sparse import _stripped

    converter = tf.lite.TFLiteConverter.from_keras_model(float32_copy(_stripped(model)))
    if sparse:
        converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    # The converter prints its SavedModel's signature, and its C++ side logs pages of
    # diagnostics on failure: keep both out of the user's terminal.
    with contextlib.redirect_stdout(io.StringIO()), _stderr_captured():
        try:
            return converter.convert()
        except Exception as error:  # ConverterError, and whatever TensorFlow raises while tracing
            raise ValueError(f"LiteRT conversion failed: {_conversion_reason(error)}") from error


def float32_copy(model: keras.Model) -> keras.Model:
    """``model`` itself, or, if it computes in half precision (a ``mixed_float16`` policy, for
    example), a float32 copy with the same weights.

    Raises:
        ValueError: a half-precision model whose architecture cannot be serialized (a
            subclassed model without ``get_config``), so no float32 copy can be made.

    Example:
        >>> float32_copy(model) is model  # a float32 model  # doctest: +SKIP
        True
    """
    try:
        architecture = json.loads(model.to_json())
    except (NotImplementedError, TypeError) as error:
        if _policy_name(getattr(model, "dtype_policy", None)) in HALF_POLICIES:
            raise ValueError(
                f"LiteRT runs float32 models, and this {model.dtype_policy.name} model cannot be "
                "copied as float32 (its architecture does not serialize). Rebuild it with the "
                "float32 dtype policy, load the weights, and export that."
            ) from error
        return model
    if not _to_float32(architecture):
        return model
    architecture.pop("compile_config", None)
    copy = keras.saving.deserialize_keras_object(architecture, safe_mode=False)  # our own model's config
    copy.set_weights(model.get_weights())
    return copy


def _policy_name(policy) -> str | None:
    return getattr(policy, "name", policy)


def _to_float32(config) -> bool:
    """Replaces every half-precision dtype policy in a serialized config by float32, in place."""
    changed = False
    if isinstance(config, dict):
        inner = config.get("config")
        policy = str(config.get("class_name", "")).endswith("DTypePolicy") and isinstance(inner, dict)
        if policy and inner.get("name") in HALF_POLICIES:  # {"class_name": "DTypePolicy", "config": {"name": ...}}
            inner["name"] = "float32"
            return True
        for key, value in config.items():
            if key == "dtype" and isinstance(value, str) and value in HALF_POLICIES:
                config[key] = "float32"
                changed = True
            else:
                changed = _to_float32(value) or changed
    elif isinstance(config, list):
        for value in config:
            changed = _to_float32(value) or changed
    return changed


def _conversion_reason(error: Exception) -> str:
    """One line out of a converter error, which can run to hundreds of lines."""
    text = str(error)
    missing = sorted(set(re.findall(r"'(tf\.\w+)' op is neither a custom op nor a flex op", text)))
    if missing:
        half = " in float16" if "f16>" in text else ""
        return (f"the model uses TensorFlow ops{half} that LiteRT's built-in kernels lack "
                f"({', '.join(missing)}); replace those layers or export the sparse format instead.")
    text = re.sub(r"loc\((?:[^()]|\([^()]*\))*\)", "", text)  # MLIR source locations
    return error_summary(ValueError(text), limit=250)


@contextlib.contextmanager
def _stderr_captured():
    """Sends what C++ code writes to file descriptor 2 into a temporary file for the block."""
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all
        yield
        return
    with tempfile.TemporaryFile() as sink:
        sys.stderr.flush()
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def export_litert(
    model: keras.Model, path: str | os.PathLike, *, overwrite: bool = False, sparse: bool = True
) -> Path:
    """Writes ``model`` as a LiteRT (``.tflite``) file with the sparsity optimization.

    Pruned weights are stored in LiteRT's sparse tensor format. At run time, fully connected
    layers execute with sparse kernels; other layers are densified once when the interpreter
    loads the model (a smaller file, the usual speed). See ``docs/export.md``. A
    mixed-precision model is converted as float32 (see :func:`convert_litert`). The file is
    written under a temporary name and renamed into place: a failure leaves no file.

    Args:
        model: a Keras model (a model being pruned is stripped first).
        path: the output file, ``.tflite`` by convention.
        overwrite: replace ``path`` if it exists.
        sparse: apply ``tf.lite.Optimize.EXPERIMENTAL_SPARSITY`` (``False`` gives the plain
            conversion, for comparisons).

    Returns:
        The path written.

    Raises:
        ValueError: the conversion failed (a one-line reason; see :func:`convert_litert`).

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


def litert_outputs(model: keras.Model, content: bytes, inputs) -> list[np.ndarray]:
    """Runs the LiteRT conversion ``content`` of ``model`` on ``inputs``; returns every output.

    Args:
        model: the Keras model ``content`` was converted from (it names the inputs).
        content: the LiteRT flatbuffer.
        inputs: one array, or a list of arrays in the order of ``model.inputs``.

    Returns:
        The outputs, in the order of ``keras.tree.flatten(model(inputs))``.

    Example:
        >>> [o.shape for o in litert_outputs(model, convert_litert(model), x[:8])]  # doctest: +SKIP
        [(8, 2), (8, 3)]
    """
    arrays = [np.asarray(x) for x in (inputs if isinstance(inputs, (list, tuple)) else [inputs])]
    runner = _interpreter(content).get_signature_runner()
    details = runner.get_input_details()
    names = list(details) if len(details) == 1 else [tensor.name for tensor in model.inputs]
    if len(arrays) != len(details) or set(names) != set(details):
        raise ValueError(
            f"The LiteRT model takes inputs {sorted(details)}; received {len(arrays)} arrays for "
            f"the Keras inputs {[tensor.name for tensor in model.inputs]}."
        )
    feed = {name: array.astype(details[name]["dtype"]) for name, array in zip(names, arrays)}
    outputs = runner(**feed)
    return [np.asarray(outputs[key]) for key in sorted(outputs, key=_output_order)]


def _output_order(name: str):
    """LiteRT names a Keras model's outputs output_0, output_1, ...: sort them by number."""
    match = re.fullmatch(r"output_(\d+)", name)
    return (0, int(match.group(1)), "") if match else (1, 0, name)


def litert_max_abs_diff(model: keras.Model, content: bytes, inputs) -> float:
    """The largest absolute difference between Keras and LiteRT outputs on ``inputs``, over
    every output (``inputs``: one array, or a list in the order of ``model.inputs``)."""
    expected = [keras.ops.convert_to_numpy(o) for o in keras.tree.flatten(model(inputs, training=False))]
    actual = litert_outputs(model, content, inputs)
    if [e.shape for e in expected] != [a.shape for a in actual]:
        raise ValueError(
            f"The LiteRT model's outputs have shapes {[a.shape for a in actual]}, the Keras "
            f"model's {[e.shape for e in expected]}."
        )
    return max(float(np.max(np.abs(a.astype(np.float64) - e.astype(np.float64)), initial=0.0))
               for a, e in zip(actual, expected))


def litert_ops(content: bytes) -> list[str]:
    """The operator names of a LiteRT model in execution order (``DENSIFY`` marks weights
    that are stored sparse but expanded to dense when the interpreter loads the model)."""
    interpreter = _interpreter(content)
    return [op["op_name"] for op in interpreter._get_ops_details()]
