"""Putting Keras 2 weights into the rebuilt Keras 3 model, layer by layer.

Keras 2 saved each top-level layer's weights as one list, trainable first (for a nested model,
all of its layers' weights). Keras 3 lists them in the same order as ``trainable_weights +
non_trainable_weights``, so the lists are matched by layer name and assigned in order, after
checking that every layer, count and shape agrees: a mismatch raises before anything is
assigned rather than loading a model that computes something else. (A SavedModel written with
``save_traces=False`` has no such lists; its weights come in the order the layers created
them, which is Keras 3's ``layer.weights`` order.)
"""

from __future__ import annotations

import keras
import numpy as np

from keras_prune.io import ModelFileError

TRAINABLE_FIRST = "trainable first"  # Keras 2's order in .h5 files and SavedModel variable lists
CREATION = "creation"  # the order each layer created its weights (Keras 3's layer.weights)


def assign(model: keras.Model, saved: dict[str, list[np.ndarray]], source: str, order: str = TRAINABLE_FIRST) -> None:
    """Sets the weights of ``model``'s layers from ``saved`` (``{layer name: arrays}``).

    Raises:
        ModelFileError: a layer with weights has no saved weights, a saved layer is not in
            the model, or the number or shapes of a layer's weights differ.

    Example:
        >>> import numpy as np, keras
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="d")])
        >>> assign(model, {"d": [np.ones((2, 1), "float32"), np.zeros(1, "float32")]}, "m.h5")
        >>> model.get_layer("d").kernel.numpy().ravel().tolist()
        [1.0, 1.0]
    """
    pairs = _pairs(model, saved, source, order)
    for variable, array in pairs:
        variable.assign(array.astype(variable.dtype) if array.dtype != variable.dtype else array)


def _pairs(model: keras.Model, saved: dict[str, list[np.ndarray]], source: str, order: str) -> list:
    layers = [layer for layer in model.layers if layer.weights]
    names = {layer.name for layer in layers}
    missing = [layer.name for layer in layers if layer.name not in saved]
    extra = [name for name in saved if name not in names]
    if missing or extra:
        raise ModelFileError(
            f"The weights in '{source}' do not match its layers (no weights saved for "
            f"{missing or 'none'}; weights of unknown layers {extra or 'none'})."
        )
    pairs = []
    for layer in layers:
        variables = layer.weights if order == CREATION else layer.trainable_weights + layer.non_trainable_weights
        arrays = saved[layer.name]
        shapes = [tuple(v.shape) for v in variables]
        if [tuple(a.shape) for a in arrays] != shapes:
            raise ModelFileError(
                f"Layer '{layer.name}' in '{source}' has weights of shapes {[tuple(a.shape) for a in arrays]}, "
                f"but Keras 3 builds it with {shapes}; the file does not match its own config."
            )
        pairs.extend(zip(variables, arrays))
    return pairs
