"""Keras 2 activations whose Keras 3 namesake computes something else.

Keras 2 (tf.keras up to TF 2.15 and standalone Keras) defined ``hard_sigmoid`` as
``clip(0.2 x + 0.5, 0, 1)``; Keras 3's ``hard_sigmoid`` is ``relu6(x + 3) / 6``, that is
``clip(x / 6 + 0.5, 0, 1)``. A model saved with ``"hard_sigmoid"`` (the default
``recurrent_activation`` of LSTM and GRU up to Keras 2.3) would silently compute different
outputs in Keras 3, so the loader writes :func:`keras2_hard_sigmoid` instead. It is registered
with Keras as ``keras_prune>keras2_hard_sigmoid``: a converted ``.keras`` file loads with
``import keras_prune.legacy``.
"""

from __future__ import annotations

import keras

KERAS2_HARD_SIGMOID = "keras_prune>keras2_hard_sigmoid"


@keras.saving.register_keras_serializable(package="keras_prune", name="keras2_hard_sigmoid")
def keras2_hard_sigmoid(x):
    """Keras 2's ``hard_sigmoid``: ``clip(0.2 x + 0.5, 0, 1)``.

    Example:
        >>> import numpy as np
        >>> values = keras.ops.convert_to_numpy(keras2_hard_sigmoid(np.array([-3.0, -1.0, 0.0, 1.0, 3.0], "float32")))
        >>> [round(float(v), 3) for v in values]
        [0.0, 0.3, 0.5, 0.7, 1.0]
    """
    x = keras.ops.convert_to_tensor(x)
    return keras.ops.clip(x * 0.2 + 0.5, 0.0, 1.0)


def serialized() -> dict:
    """:func:`keras2_hard_sigmoid` as a Keras 3 layer config writes an activation function."""
    return {"module": "builtins", "class_name": "function", "config": KERAS2_HARD_SIGMOID,
            "registered_name": "function"}
