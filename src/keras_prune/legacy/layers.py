"""One Keras 2 layer config written for Keras 3: the settings Keras 3 dropped or renamed, and
the layers it cannot rebuild at all.

A setting is removed only when its saved value is the one Keras 3 always behaves by (``groups=1``
on a depthwise convolution, ``time_major=False``); any other value is refused, because dropping
it would change the outputs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import keras

from keras_prune.io import ModelFileError
from keras_prune.legacy import objects
from keras_prune.legacy.notes import Translation, shown

RNNS = {"SimpleRNN", "LSTM", "GRU", "RNN", "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D"}
NO_GROUPS = {"DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D", "SeparableConv2D",
             "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose"}
SEPARABLE = {"SeparableConv1D", "SeparableConv2D"}
BATCHNORM = {"BatchNormalization"}
SHAPE_SETTINGS = ("batch_input_shape", "input_shape", "batch_size")  # input_dim is also an Embedding setting
WRAPPED = ("layer", "backward_layer", "cell")  # settings that hold a whole layer config
TF_KERAS_ADVICE = ("load the file with tf_keras (pip install tf_keras), rewrite that layer with "
                   "standard Keras layers, and save it again")
REFUSED = {
    "Lambda": "a Lambda layer: Keras 2 saved its Python code as bytecode, which cannot be rebuilt "
              "safely in Keras 3; replace it by a registered custom layer (pass it with "
              "--custom-objects module.py, API: custom_objects=) or " + TF_KERAS_ADVICE,
    "TFOpLambda": "a TensorFlow function called on tf.keras tensors (TFOpLambda), which Keras 3 "
                  "cannot rebuild; " + TF_KERAS_ADVICE,
    "SlicingOpLambda": "a tensor slice recorded by tf.keras (SlicingOpLambda), which Keras 3 cannot "
                       "rebuild; " + TF_KERAS_ADVICE,
    "Merge": "a Keras 1 Merge layer; open the file with Keras 2.2.5 (standalone) and save it again",
}


@dataclasses.dataclass(frozen=True)
class Drop:
    """Removes ``setting`` from ``classes`` (all when empty) if ``neutral(value)``."""

    setting: str
    classes: frozenset[str]
    neutral: Callable[[object], bool]
    reason: str


DROPS = (
    Drop("groups", frozenset(NO_GROUPS), lambda v: v == 1,
         "Keras 3 has groups only on Conv1D/2D/3D; 1 is the value this layer always had"),
    Drop("time_major", frozenset(RNNS), lambda v: not v,
         "Keras 3 RNNs always take batch-major inputs, as this layer did"),
    Drop("fused", frozenset(BATCHNORM), lambda v: True,
         "it chose tf.keras's BatchNorm kernel, not the result"),
    Drop("virtual_batch_size", frozenset(BATCHNORM), lambda v: v is None, "Keras 3 has no ghost batch norm"),
    Drop("adjustment", frozenset(BATCHNORM), lambda v: v is None, "Keras 3 has no BatchNorm adjustment"),
    Drop("input_length", frozenset({"Embedding"}), lambda v: True,
         "Keras 3 takes the sequence length from the input shape"),
    *(Drop(f"kernel_{kind}", frozenset(SEPARABLE), lambda v: True,
           f"tf.keras's separable convolutions never used it: they have depthwise_{kind} and pointwise_{kind}")
      for kind in ("initializer", "regularizer", "constraint")),
)
RENAMES = {("LeakyReLU", "alpha"): "negative_slope"}


def keras_class(class_name: str) -> type | None:
    """The built-in Keras 3 layer called ``class_name``, or ``None`` (a custom or removed class)."""
    cls = getattr(keras.layers, class_name, None)
    return cls if isinstance(cls, type) and issubclass(cls, keras.layers.Layer) else None


def refuse_removed(class_name: str, name: str) -> None:
    """Raises for layers that carry code or that Keras 3 removed."""
    if class_name in REFUSED:
        raise ModelFileError(f"layer '{name}' is {REFUSED[class_name]}.")


def translate_settings(class_name: str, config: dict, notes: list[Translation]) -> dict:
    """``config`` (one layer's settings, without nested layers) written for Keras 3.

    Example:
        >>> notes = []
        >>> translate_settings("DepthwiseConv2D", {"name": "dw", "kernel_size": [3, 3], "groups": 1}, notes)
        {'name': 'dw', 'kernel_size': [3, 3]}
        >>> print(notes[0])
        dw: groups=1 removed (Keras 3 has groups only on Conv1D/2D/3D; 1 is the value this layer always had)
    """
    name = config.get("name", class_name)
    config = dict(config)
    for drop in DROPS:
        if drop.setting in config and (not drop.classes or class_name in drop.classes):
            value = config.pop(drop.setting)
            if not drop.neutral(value):
                raise ModelFileError(
                    f"layer '{name}' ({class_name}) sets {drop.setting}={value!r}, which Keras 3 cannot "
                    f"reproduce; {TF_KERAS_ADVICE}."
                )
            if value is not None:  # a null setting says nothing: removing it changes nothing
                notes.append(Translation(name, drop.setting, shown(value), None, drop.reason))
    for (cls, old), new in RENAMES.items():
        if class_name == cls and old in config:
            value = config.pop(old)
            config[new] = value
            notes.append(Translation(name, old, shown(value), f"{new}={shown(value)}", "renamed in Keras 3"))
    if class_name in BATCHNORM and isinstance(config.get("axis"), list) and len(config["axis"]) == 1:
        config["axis"] = config["axis"][0]
    return _translate_values(config, name, notes)


def _translate_values(config: dict, name: str, notes: list[Translation]) -> dict:
    for key, value in config.items():
        if key.endswith("activation"):
            config[key] = objects.translate_activation(value, name, key, notes)
        elif key == "dtype":
            config[key] = objects.translate_dtype(value)
        else:
            kind = next((k for k in objects.MODULES if key.endswith(f"_{k}")), None)
            if kind is not None:
                config[key] = objects.translate_object(kind, value, name, key, notes)
    return config

