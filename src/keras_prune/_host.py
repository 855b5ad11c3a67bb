"""Host reads and writes of whole variables, without Keras' per-call overhead.

A mask update reads each pruned kernel into numpy and writes kernel, mask and threshold back,
every ``frequency`` steps during training. Through ``Variable.assign`` and
``convert_to_numpy`` each of those costs 100-200 us of Python checks on TensorFlow, several
times the copy itself; the variable's own read and assign ops cost ~20 us. Callers pass
arrays of the variable's shape and dtype.

One-shot pruning of large models reads each weight through :func:`view` (no copy on CPU) and
writes it through :func:`rewrite` (one new buffer, which TensorFlow's variable takes over), so
pruning a weight needs one extra copy of it at most.
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


def _tf_eager(variable) -> bool:
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return tf.executing_eagerly() and hasattr(variable, "handle")


def _distributed(variable) -> bool:
    import tensorflow as tf

    return isinstance(variable.value, tf.distribute.DistributedValues)


def view(variable: keras.Variable) -> np.ndarray:
    """The variable's current value, read-only, without a copy where the backend keeps it in
    host memory (TensorFlow and JAX on CPU): a snapshot, since both backends copy a variable
    they write while such a view of it is alive (hold it no longer than needed, or that
    write pays for a new buffer).

    Example:
        >>> variable = keras.Variable(np.ones(3, "float32"))
        >>> values = view(variable)
        >>> values.tolist(), values.flags.writeable
        ([1.0, 1.0, 1.0], False)
    """
    if _tf_eager(variable):
        import tensorflow as tf

        tensor = tf.raw_ops.ReadVariableOp(resource=variable.handle, dtype=variable.value.dtype)
        values = tensor._numpy() if hasattr(tensor, "_numpy") else tensor.numpy()  # _numpy: no copy
    elif keras.backend.backend() == "jax":
        values = np.asarray(variable.value)  # a view of a host array
    else:
        values = np.asarray(keras.ops.convert_to_numpy(variable))
    values = values.view()
    values.flags.writeable = False
    return values


def _flat_step(shape: tuple[int, ...], chunk: int) -> int:
    """Elements per chunk: whole leading rows (along the first axis), about ``chunk`` of them."""
    row = math.prod(shape[1:]) if len(shape) > 1 else 1
    return max(1, chunk // max(row, 1)) * max(row, 1)


def read_chunks(variable: keras.Variable, chunk: int | None = None) -> Iterator[np.ndarray]:
    """The variable's values in C order, as flat read-only arrays of about ``chunk`` elements
    (:data:`CHUNK` by default) in whole leading rows, so the first chunk is the first rows of
    the tensor; viewed without a copy where :func:`view` can.
    """
    flat = view(variable).reshape(-1)
    step = _flat_step(tuple(variable.shape), chunk or CHUNK)
    for start in range(0, flat.size, step):
        yield flat[start:start + step]


def rewrite(
    variable: keras.Variable, change: Callable[[np.ndarray, np.ndarray], None], chunk: int | None = None
) -> None:
    """Gives the variable a new value computed chunk by chunk, then writes it once.

    ``change(old, new)`` is called on each flat chunk of the current values (read-only, cut as
    :func:`read_chunks` cuts them, of about ``chunk`` elements) and the same chunk of the new value, of the variable's
    dtype, which it must fill entirely.

    The extra memory is one copy of the variable, the new value: on TensorFlow it is a
    tensor the variable then takes over, with no copy on the write.

    Example:
        >>> variable = keras.Variable(np.arange(4.0, dtype="float32"))
        >>> rewrite(variable, lambda old, new: np.multiply(old, 2, out=new))
        >>> read(variable).tolist()
        [0.0, 2.0, 4.0, 6.0]
    """
    shape = tuple(variable.shape)
    tensor = None
    if _tf_eager(variable) and not _distributed(variable):
        import tensorflow as tf

        tensor = tf.raw_ops.Empty(shape=shape, dtype=variable.value.dtype, init=False)
        new = tensor._numpy() if hasattr(tensor, "_numpy") else None
        if new is None or not new.flags.writeable:
            tensor, new = None, np.empty(shape, dtype=variable.value.dtype.as_numpy_dtype)
    else:
        new = np.empty(shape, dtype=view(variable).dtype)
    old = view(variable).reshape(-1)
    flat = new.reshape(-1)
    step = _flat_step(shape, chunk or CHUNK)
    for start in range(0, flat.size, step):
        change(old[start:start + step], flat[start:start + step])
    del old, flat
    if tensor is None:
        write(variable, new)
        return
    import tensorflow as tf

    del new  # no reference left but the tensor's: the variable takes its buffer over
    tf.raw_ops.AssignVariableOp(resource=variable.handle, value=tensor)


def sample(variable: keras.Variable, count: int) -> np.ndarray:
    """About ``count`` of the variable's values, evenly strided over its flat C order."""
    size = math.prod(tuple(variable.shape))
    step = max(1, size // max(count, 1))
    return np.array(view(variable).reshape(-1)[::step])
