"""Host reads and writes of whole variables, without Keras' per-call overhead.

A mask update reads each pruned kernel into numpy and writes kernel, mask and threshold back,
every ``frequency`` steps during training. Through ``Variable.assign`` and
``convert_to_numpy`` each of those costs 100-200 us of Python checks on TensorFlow, several
times the copy itself; the variable's own read and assign ops cost ~20 us. Callers pass
arrays of the variable's shape and dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import keras
import numpy as np


def read(variable: keras.Variable) -> np.ndarray:
    """The variable's current value as a numpy array (changing it leaves the variable as it is)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.raw_ops.ReadVariableOp(resource=variable.handle, dtype=variable.value.dtype).numpy()
    return keras.ops.convert_to_numpy(variable)


def write(variable: keras.Variable, value: np.ndarray) -> None:
    """Sets the variable to ``value``, cast to the variable's dtype.

    Example:
        >>> variable = keras.Variable(np.zeros(3, "float32"))
        >>> write(variable, np.array([True, False, True]))
        >>> read(variable).tolist()
        [1.0, 0.0, 1.0]
    """
    if np.shape(value) != tuple(variable.shape):  # the raw assign would reshape the variable
        raise ValueError(
            f"Argument `value` must have shape {tuple(variable.shape)} for '{variable.path}'. "
            f"Received: shape={np.shape(value)}"
        )
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        value = np.asarray(value, dtype=variable.value.dtype.as_numpy_dtype)
        if isinstance(variable.value, tf.distribute.DistributedValues):
            variable.value.assign(value)  # every replica's copy (the handle is the first one's)
        else:
            tf.raw_ops.AssignVariableOp(resource=variable.handle, value=value)
        return
    variable.assign(value)


CHUNK = 1 << 18  # elements per chunk: 1 MiB of float32, small enough to stay in cache


def _flat_step(shape: tuple[int, ...], chunk: int) -> int:
    """Elements per chunk: whole leading rows (along the first axis), about ``chunk`` of them."""
    row = math.prod(shape[1:]) if len(shape) > 1 else 1
    return max(1, chunk // max(row, 1)) * max(row, 1)


def read_chunks(variable: keras.Variable, chunk: int = CHUNK) -> Iterator[np.ndarray]:
    """The variable's values in C order, as flat arrays of about ``chunk`` elements (whole
    leading rows, so the first chunk is the first rows of the tensor).

    One copy of the variable is held while its chunks are read (a read-only view on
    backends that share host memory); each chunk is valid until the next one is asked for.
    """
    flat = np.asarray(read(variable)).reshape(-1)
    step = _flat_step(tuple(variable.shape), chunk)
    for start in range(0, flat.size, step):
        yield flat[start:start + step]


def update_chunks(variable: keras.Variable, change: Callable[[np.ndarray], None], chunk: int = CHUNK) -> None:
    """Calls ``change`` on each flat chunk of the variable's values (as :func:`read_chunks`
    cuts them, writable) to edit them in place, then writes the variable once.

    The extra memory is one copy of the variable (TensorFlow copies the new value into the
    variable's own buffer when nothing else reads it).
    """
    values = read(variable)
    if not values.flags.writeable:
        values = np.array(values, copy=True)
    flat = values.reshape(-1)
    step = _flat_step(tuple(variable.shape), chunk)
    for start in range(0, flat.size, step):
        change(flat[start:start + step])
    write(variable, values)


def sample(variable: keras.Variable, count: int) -> np.ndarray:
    """About ``count`` of the variable's values, evenly strided over its flat C order."""
    size = math.prod(tuple(variable.shape))
    step = max(1, size // max(count, 1))
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if tf.executing_eagerly() and hasattr(variable, "handle"):
            value = tf.raw_ops.ReadVariableOp(resource=variable.handle, dtype=variable.value.dtype)
            return tf.reshape(value, [-1])[::step].numpy()
    return np.array(np.asarray(keras.ops.convert_to_numpy(variable)).reshape(-1)[::step])
