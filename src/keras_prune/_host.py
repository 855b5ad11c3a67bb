"""Host reads and writes of whole variables, without Keras' per-call overhead.

A mask update reads each pruned kernel into numpy and writes kernel, mask and threshold back,
every ``frequency`` steps during training. Through ``Variable.assign`` and
``convert_to_numpy`` each of those costs 100-200 us of Python checks on TensorFlow, several
times the copy itself; the variable's own read and assign ops cost ~20 us. Callers pass
arrays of the variable's shape and dtype.
"""

from __future__ import annotations

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
        tf.raw_ops.AssignVariableOp(resource=variable.handle, value=value)
        return
    variable.assign(value)
