"""A whole Keras 2 model config (``model.to_json()``, or the config inside an ``.h5`` file or a
SavedModel) written in Keras 3's format, with a note for every translated setting.

Keras 2 gave a Sequential model its input shape through ``batch_input_shape`` (or
``input_shape``) on the first layer; Keras 3 needs an ``InputLayer`` in front, so one is
inserted. Functional models keep their layers and connections; each layer goes through
:func:`keras_prune.legacy.layers.translate_settings`, nested models and wrapped layers
(Bidirectional, TimeDistributed, RNN cells) included.
"""

from __future__ import annotations

import copy

from keras_prune.io import ModelFileError
from keras_prune.legacy import layers as layer_rules
from keras_prune.legacy import objects
from keras_prune.legacy.notes import Translation, shown

FUNCTIONAL = ("Functional", "Model")
INPUT_REASON = "Keras 3 gives a Sequential model its input shape with an InputLayer before the first layer"
REPEATED_REASON = "the model's InputLayer sets the input shape"


def translate_config(config: dict) -> tuple[dict, list[Translation]]:
    """``config`` (a Keras 2 model config: ``class_name`` and ``config``) in Keras 3's format,
    and the list of translations made.

    Example:
        >>> old = {"class_name": "Sequential", "config": {"name": "s", "layers": [
        ...     {"class_name": "LSTM", "config": {"name": "lstm", "units": 4, "batch_input_shape": [None, 6, 3],
        ...      "recurrent_activation": "hard_sigmoid", "time_major": False}}]}}
        >>> new, notes = translate_config(old)
        >>> [layer["class_name"] for layer in new["config"]["layers"]]
        ['InputLayer', 'LSTM']
        >>> for note in notes:
        ...     print(note)
        lstm: batch_input_shape=(None, 6, 3) -> InputLayer(batch_shape=(None, 6, 3)) (Keras 3 gives ...)
        lstm: time_major=False removed (Keras 3 RNNs always take batch-major inputs, as this layer did)
        lstm: recurrent_activation=hard_sigmoid -> keras_prune>keras2_hard_sigmoid (Keras 2's hard_sigmoid ...)
    """
    if not isinstance(config, dict) or "class_name" not in config:
        raise ModelFileError("its model config has no `class_name`; it is not a Keras model config.")
    notes: list[Translation] = []
    return translate_layer(objects.decode_tuples(copy.deepcopy(config)), notes), notes


def translate_layer(layer: dict, notes: list[Translation]) -> dict:
    """One layer (or nested model) config dict, in Keras 3's format."""
    class_name, config = layer.get("class_name"), layer.get("config")
    if class_name == "Sequential":
        out = _sequential(config, notes)
    elif class_name in FUNCTIONAL and isinstance(config, dict) and "layers" in config:
        out = _functional(config, notes)
    else:
        out = _layer(class_name, config if isinstance(config, dict) else {}, notes)
    out.update({key: layer[key] for key in ("name", "inbound_nodes") if key in layer})
    return out


def _layer(class_name: str, config: dict, notes: list[Translation]) -> dict:
    layer_rules.refuse_removed(class_name, config.get("name", class_name))
    config = dict(config)
    for key in layer_rules.WRAPPED:
        if isinstance(config.get(key), dict):
            config[key] = translate_layer(config[key], notes)
    if isinstance(config.get("cells"), list):  # StackedRNNCells
        config["cells"] = [translate_layer(cell, notes) for cell in config["cells"]]
    if class_name == "InputLayer" and "batch_input_shape" in config:
        config["batch_shape"] = config.pop("batch_input_shape")
    config = layer_rules.translate_settings(class_name, config, notes)
    if layer_rules.keras_class(class_name) is None:  # found by the registered name: custom_objects
        return {"module": None, "class_name": class_name, "config": config, "registered_name": class_name}
    return {"module": "keras.layers", "class_name": class_name, "config": config, "registered_name": None}


def _sequential(config, notes: list[Translation]) -> dict:
    if isinstance(config, list):  # Keras <= 2.1 wrote the layers alone
        config = {"name": "sequential", "layers": config}
    config = dict(config)
    layers = [dict(layer) for layer in config.get("layers", [])]
    build_shape = config.pop("build_input_shape", None)
    if layers and layers[0].get("class_name") != "InputLayer":
        first = dict(layers[0].get("config") or {})
        shape = _batch_shape(first) or build_shape
        if shape is not None:
            name = first.get("name", "layer")
            if _batch_shape(first) is not None:
                notes.append(Translation(name, _shape_setting(first), shown(_saved_shape(first)),
                                         f"InputLayer(batch_shape={shown(shape)})", INPUT_REASON))
            layers[0] = _without_shape(layers[0], notes, noted=False)  # the note above says where it went
            layers.insert(0, _input_layer(shape, first, f"{name}_input"))
    config["layers"] = [translate_layer(_without_shape(layer, notes), notes) for layer in layers]
    return {"module": "keras", "class_name": "Sequential", "config": config, "registered_name": None}


def _functional(config: dict, notes: list[Translation]) -> dict:
    config = dict(config)
    _renumber_nested_nodes(config)
    for key in ("input_layers", "output_layers"):  # one input: a tensor, not a list of one (as Keras 3 writes it)
        value = config.get(key)
        if isinstance(value, list) and len(value) == 1 and isinstance(value[0], list):
            config[key] = value[0]
    config["layers"] = [translate_layer(_without_shape(dict(layer), notes), notes) for layer in config["layers"]]
    return {"module": "keras", "class_name": "Model", "config": config, "registered_name": None}


def _renumber_nested_nodes(config: dict) -> None:
    """Keras 2 counted, for a nested model built on an Input, the node of its own construction
    as node 0, so its first call in the outer model is node 1; Keras 3 counts calls only."""
    nested = {layer.get("name") or layer["config"].get("name") for layer in config["layers"] if _built_on_input(layer)}
    references = [ref for layer in config["layers"] for node in layer.get("inbound_nodes") or [] for ref in node]
    outputs = config.get("output_layers") or []
    references += [outputs] if outputs and isinstance(outputs[0], str) else list(outputs)
    for ref in references:
        if isinstance(ref, list) and len(ref) >= 3 and ref[0] in nested and isinstance(ref[1], int) and ref[1] > 0:
            ref[1] -= 1


def _built_on_input(layer: dict) -> bool:
    """Whether a layer config is a model that Keras 2 built on an Input (so that it had a node
    before it was called)."""
    config = layer.get("config")
    if layer.get("class_name") in FUNCTIONAL:
        return isinstance(config, dict) and "layers" in config
    if layer.get("class_name") != "Sequential":
        return False
    layers = config if isinstance(config, list) else (config or {}).get("layers") or []
    first = layers[0] if layers else {}
    return first.get("class_name") == "InputLayer" or _batch_shape(first.get("config") or {}) is not None


def _batch_shape(config: dict) -> list | None:
    """The batch shape a Keras 2 first layer declared, if any."""
    if config.get("batch_input_shape") is not None:
        return list(config["batch_input_shape"])
    if config.get("input_shape") is not None:
        return [config.get("batch_size"), *config["input_shape"]]
    return None


def _shape_setting(config: dict) -> str:
    return "batch_input_shape" if config.get("batch_input_shape") is not None else "input_shape"


def _saved_shape(config: dict):
    return config[_shape_setting(config)]


def _input_layer(shape: list, first: dict, name: str) -> dict:
    dtype = objects.translate_dtype(first.get("dtype", "float32"))
    if not isinstance(dtype, str) or dtype.startswith("mixed"):
        dtype = "float32"
    return {"class_name": "InputLayer", "config": {"batch_shape": shape, "dtype": dtype, "name": name}}


def _without_shape(layer: dict, notes: list[Translation], noted: bool = True) -> dict:
    """``layer`` without the input-shape settings an InputLayer now holds (noted when ``noted``)."""
    if layer.get("class_name") == "InputLayer" or not isinstance(layer.get("config"), dict):
        return layer
    config = dict(layer["config"])
    for key in layer_rules.SHAPE_SETTINGS:
        if key in config:
            value = config.pop(key)
            if noted and value is not None:
                notes.append(Translation(config.get("name", "?"), key, shown(value), None, REPEATED_REASON))
    layer["config"] = config
    return layer

