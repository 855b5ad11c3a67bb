"""Models saved by Keras 2 (tf.keras in TF 2.3-2.15, standalone Keras 2.x), loaded as Keras 3.

:func:`keras_prune.io.load_model` (and so every ``keras-prune`` command) reads Keras 2
``.h5``/``.hdf5`` files, ``to_json()`` architectures with their ``.h5`` weights, tf.keras
SavedModel folders and the ``.keras`` files of tf.keras 2.13-2.15 through this package: the config is translated to Keras 3 (see
:mod:`keras_prune.legacy.layers` and :mod:`keras_prune.legacy.objects` for the rules), the
model built, and the saved weights put in. Every translated setting is recorded; read them with
:func:`conversion_of`:

    >>> import keras_prune.legacy as legacy
    >>> new, notes = legacy.translate_config({"class_name": "Sequential", "config": {"name": "s",
    ...     "layers": [{"class_name": "Dense", "config": {"name": "d", "units": 2,
    ...     "batch_input_shape": [None, 3], "activation": "hard_sigmoid"}}]}})
    >>> print(notes[1])
    d: activation=hard_sigmoid -> keras_prune>keras2_hard_sigmoid (Keras 2's hard_sigmoid is ...)

Importing this package registers :func:`keras2_hard_sigmoid`, so converted ``.keras`` files load.
"""

from keras_prune.legacy.activations import keras2_hard_sigmoid
from keras_prune.legacy.config import translate_config
from keras_prune.legacy.loader import build, is_legacy_json, load_h5, load_json, load_keras_zip, load_saved_model
from keras_prune.legacy.notes import Conversion, Translation, conversion_of

__all__ = [
    "Conversion",
    "Translation",
    "build",
    "conversion_of",
    "is_legacy_json",
    "keras2_hard_sigmoid",
    "load_h5",
    "load_json",
    "load_keras_zip",
    "load_saved_model",
    "translate_config",
]
