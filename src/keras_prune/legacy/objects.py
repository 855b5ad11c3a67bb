"""The objects inside a Keras 2 layer config, written for Keras 3: activations, initializers,
regularizers, constraints and dtype policies.

Each ``translate_*`` function takes the saved value and returns the Keras 3 value, appending a
:class:`~keras_prune.legacy.notes.Translation` to ``notes`` for every change of meaning or name
(a change of spelling only, such as the ``"module"`` key Keras 3 adds, is not a translation).
"""

from __future__ import annotations

import keras

from keras_prune.legacy import activations
from keras_prune.legacy.notes import Translation

HARD_SIGMOID_REASON = (
    "Keras 2's hard_sigmoid is clip(0.2x+0.5, 0, 1) but Keras 3's is relu6(x+3)/6; "
    "keras_prune's keras2_hard_sigmoid computes Keras 2's"
)
# Keras 2 short names that Keras 3 does not know, by kind.
INITIALIZER_ALIASES = {"normal": "RandomNormal", "uniform": "RandomUniform", "zero": "Zeros", "one": "Ones"}
REGULARIZER_DEFAULTS = {"l1": ("L1", {"l1": 0.01}), "l2": ("L2", {"l2": 0.01}),
                        "l1_l2": ("L1L2", {"l1": 0.01, "l2": 0.01})}
MODULES = {"initializer": keras.initializers, "regularizer": keras.regularizers, "constraint": keras.constraints}


def decode_tuples(value):
    """Replaces the ``{"class_name": "__tuple__", "items": [...]}`` (and ``TensorShape``) dicts
    of tf.keras SavedModel metadata by plain lists.

    Example:
        >>> decode_tuples({"kernel_size": {"class_name": "__tuple__", "items": [3, 3]}})
        {'kernel_size': [3, 3]}
    """
    if isinstance(value, dict):
        if value.get("class_name") in ("__tuple__", "TensorShape") and "items" in value:
            return [decode_tuples(item) for item in value["items"]]
        return {key: decode_tuples(item) for key, item in value.items()}
    if isinstance(value, list):
        return [decode_tuples(item) for item in value]
    return value


def translate_activation(value, layer: str, setting: str, notes: list[Translation]):
    """A saved activation (a name, or a tf.keras function dict) for Keras 3.

    Example:
        >>> notes = []
        >>> translate_activation("hard_sigmoid", "lstm", "recurrent_activation", notes)["config"]
        'keras_prune>keras2_hard_sigmoid'
        >>> print(notes[0].change())
        recurrent_activation=hard_sigmoid -> keras_prune>keras2_hard_sigmoid
    """
    name = value
    if isinstance(value, dict) and value.get("class_name") == "function":
        name = value.get("config")
    if name == "hard_sigmoid":
        notes.append(Translation(layer, setting, "hard_sigmoid", activations.KERAS2_HARD_SIGMOID, HARD_SIGMOID_REASON))
        return activations.serialized()
    return name if isinstance(name, str) else value


def translate_object(kind: str, value, layer: str, setting: str, notes: list[Translation]):
    """A saved initializer, regularizer or constraint (``kind``) as a Keras 3 config dict.

    Example:
        >>> notes = []
        >>> old = {"class_name": "VarianceScaling", "config": {"scale": 1.0, "mode": "fan_avg",
        ...        "distribution": "normal", "seed": None, "dtype": "float32"}}
        >>> new = translate_object("initializer", old, "dense", "kernel_initializer", notes)
        >>> new["class_name"], new["config"]["distribution"], "dtype" in new["config"]
        ('VarianceScaling', 'truncated_normal', False)
        >>> [note.change() for note in notes]
        ['kernel_initializer.dtype=float32 removed', 'kernel_initializer.distribution=normal -> truncated_normal']
    """
    if value is None:
        return None
    if isinstance(value, str):
        if kind == "regularizer" and value in REGULARIZER_DEFAULTS:
            class_name, config = REGULARIZER_DEFAULTS[value]
            return _config(kind, class_name, dict(config))
        value = {"class_name": value, "config": {}}
    if not isinstance(value, dict) or "class_name" not in value:
        return value
    class_name = _class_name(kind, value["class_name"])
    if class_name is None:  # a custom object: its registered name finds it
        return {"module": None, "class_name": value["class_name"], "config": value.get("config"),
                "registered_name": value["class_name"]}
    config = dict(value.get("config") or {})
    if "dtype" in config and kind == "initializer":
        notes.append(Translation(layer, f"{setting}.dtype", str(config.pop("dtype")), None,
                                 "Keras 3 initializers take the dtype of the weight they fill"))
    if class_name == "VarianceScaling" and config.get("distribution") == "normal":
        config["distribution"] = "truncated_normal"
        notes.append(Translation(layer, f"{setting}.distribution", "normal", "truncated_normal",
                                 "Keras 2's 'normal' drew from a truncated normal; Keras 3 names it so"))
    return _config(kind, class_name, config)


def _class_name(kind: str, name: str) -> str | None:
    """The Keras 3 class for a Keras 2 name ("glorot_uniform", "GlorotUniform", "max_norm"...)."""
    name = INITIALIZER_ALIASES.get(name, name) if kind == "initializer" else name
    key = name.replace("_", "").lower()
    module = MODULES[kind]
    for candidate in dir(module):
        if candidate.lower() == key and isinstance(getattr(module, candidate), type):
            return candidate
    return None


def _config(kind: str, class_name: str, config: dict) -> dict:
    return {"module": f"keras.{kind}s", "class_name": class_name, "config": config, "registered_name": None}


def translate_dtype(value):
    """A tf.keras dtype policy dict (``{"class_name": "Policy", ...}``) as its name."""
    if isinstance(value, dict) and isinstance(value.get("config"), dict) and "name" in value["config"]:
        return value["config"]["name"]
    return value
