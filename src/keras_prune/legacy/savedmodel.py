"""Reading tf.keras SavedModel folders: the Keras metadata (each layer's config) and the weights
of each layer from the variables checkpoint.

``model.save("folder")`` in tf.keras 2.x writes ``saved_model.pb`` (TensorFlow graphs),
``variables/`` (a checkpoint) and, from TF 2.5, ``keras_metadata.pb``: one JSON document per
Keras object, keyed by the same node ids as the checkpoint's object graph (TF 2.2 to 2.4 kept
these documents inside ``saved_model.pb``). The root document holds the model config; each
top-level layer is the root's child ``layer-N`` or ``layer_with_weights-N``, and its
``variables`` child lists its weights in the order Keras 2 kept them (trainable first), the
same order as in an HDF5 file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from keras_prune.io import ModelFileError
from keras_prune.legacy.weights import CREATION, TRAINABLE_FIRST

METADATA_FILE = "keras_metadata.pb"
GRAPH_FILE = "saved_model.pb"
OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
LAYER_CHILD = re.compile(r"layer(_with_weights)?-\d+")
# Children of a layer node that hold no weights of the layer.
NOT_WEIGHTS = {"_random_generator", "state_spec", "keras_api", "optimizer", "signatures", "_default_save_signature"}
NO_METADATA = (
    "is a TensorFlow SavedModel without Keras metadata (written by tf.saved_model.save or "
    "Keras 3's model.export, not by a tf.keras model.save), so it holds graphs but no layers to "
    "prune; load the original Keras model instead, or rebuild it in Keras 3 and load its weights"
)


def is_saved_model(folder: Path) -> bool:
    """Whether ``folder`` looks like a SavedModel (it has ``saved_model.pb``)."""
    return (folder / GRAPH_FILE).is_file()


def read_metadata(folder: Path) -> dict[int, dict]:
    """``{node id: parsed Keras metadata}`` of a SavedModel folder; raises if there is none."""
    path = folder / METADATA_FILE
    if path.is_file():
        try:
            nodes = dict(_saved_objects(path.read_bytes()))
        except (ModelFileError, UnicodeDecodeError) as error:
            raise ModelFileError(f"'{folder}': {error}; is the folder complete?") from None
    else:
        nodes = _metadata_in_graph(folder)
    if 0 not in nodes:
        raise ModelFileError(f"'{folder}' {NO_METADATA}.")
    try:
        return {node_id: json.loads(text) for node_id, text in nodes.items() if text}
    except json.JSONDecodeError as error:
        raise ModelFileError(f"'{folder}' has unreadable Keras metadata ({error}).") from None


def _saved_objects(data: bytes):
    """``(node_id, metadata)`` of each SavedObject in a ``keras_metadata.pb`` (a SavedMetadata
    message: field 1 repeats SavedObject, whose field 2 is node_id and field 5 the metadata)."""
    for number, nested in _fields(data):
        if number == 1 and isinstance(nested, bytes):
            fields = dict(_fields(nested))
            yield fields.get(2, 0), fields.get(5, b"").decode("utf-8")


def _fields(data: bytes):
    """The ``(field number, value)`` pairs of a protobuf message in wire format: integers for
    varints, bytes for length-delimited and fixed-size fields."""
    position = 0
    while position < len(data):
        key, position = _varint(data, position)
        wire_type = key & 7
        if wire_type == 0:
            value, position = _varint(data, position)
        elif wire_type == 2:
            size, position = _varint(data, position)
            value, position = data[position:position + size], position + size
        elif wire_type in (1, 5):
            size = 8 if wire_type == 1 else 4
            value, position = data[position:position + size], position + size
        else:
            raise ModelFileError(f"unreadable {METADATA_FILE} (wire type {wire_type})")
        yield key >> 3, value


def _varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if position >= len(data):
            raise ModelFileError(f"unreadable {METADATA_FILE} (truncated)")
        byte = data[position]
        value |= (byte & 0x7F) << shift
        position, shift = position + 1, shift + 7
        if not byte & 0x80:
            return value, position


def _metadata_in_graph(folder: Path) -> dict[int, str]:
    """The Keras metadata TF 2.2 to 2.4 stored in ``saved_model.pb`` itself."""
    saved_model_pb2 = _tensorflow_module("tensorflow.core.protobuf.saved_model_pb2", folder)
    message = saved_model_pb2.SavedModel()
    try:
        message.ParseFromString((folder / GRAPH_FILE).read_bytes())
    except Exception as error:  # protobuf's DecodeError
        raise ModelFileError(f"'{folder / GRAPH_FILE}' is not a readable SavedModel ({error}).") from None
    if not message.meta_graphs:
        return {}
    nodes = message.meta_graphs[0].object_graph_def.nodes
    return {index: node.user_object.metadata for index, node in enumerate(nodes)
            if node.WhichOneof("kind") == "user_object" and node.user_object.metadata}


def layer_weights(folder: Path, metadata: dict[int, dict]) -> tuple[dict[str, list[np.ndarray]], str]:
    """``{layer name: its saved arrays}`` for the top-level layers with weights, and their order:
    :data:`~keras_prune.legacy.weights.TRAINABLE_FIRST` from each layer's ``variables`` list, or
    :data:`~keras_prune.legacy.weights.CREATION` when the SavedModel was saved with
    ``save_traces=False`` (no such lists; the weights are then found through the layer's
    attributes, in the order the layer created them)."""
    tf = _tensorflow_module("tensorflow", folder)
    prefix = folder / "variables" / "variables"
    try:
        reader = tf.train.load_checkpoint(str(prefix))
        graph_pb2 = _tensorflow_module("tensorflow.core.protobuf.trackable_object_graph_pb2", folder)
        graph = graph_pb2.TrackableObjectGraph()
        graph.ParseFromString(reader.get_tensor(OBJECT_GRAPH_KEY))
    except (tf.errors.OpError, ValueError) as error:
        raise ModelFileError(f"Cannot read the variables of '{folder}' ({error}); is the folder complete?") from None
    layers = [child for child in graph.nodes[0].children if LAYER_CHILD.fullmatch(child.local_name)]
    listed = all(_listing(graph, child.node_id) is not None for child in layers)
    weights = {}
    for child in layers:
        name = metadata.get(child.node_id, {}).get("name")
        if name and name not in weights:
            nodes = _listed_variables(graph, child.node_id) if listed else _owned_variables(graph, child.node_id, set())
            arrays = [reader.get_tensor(key) for node in nodes for key in _checkpoint_keys(graph, node)]
            if arrays:
                weights[name] = arrays
    return weights, TRAINABLE_FIRST if listed else CREATION


def _listing(graph, node_id: int) -> int | None:
    """The node of a layer's ``variables`` list (written with the layer's traced functions)."""
    return next((c.node_id for c in graph.nodes[node_id].children if c.local_name == "variables"), None)


def _listed_variables(graph, node_id: int) -> list[int]:
    items = graph.nodes[_listing(graph, node_id)].children
    return [item.node_id for item in sorted(items, key=lambda item: int(item.local_name))]


def _owned_variables(graph, node_id: int, seen: set[int]) -> list[int]:
    """The variable nodes under a layer node, depth first in attribute order, each once."""
    found = []
    for child in graph.nodes[node_id].children:
        if child.node_id in seen or child.local_name in NOT_WEIGHTS:
            continue
        seen.add(child.node_id)
        if _checkpoint_keys(graph, child.node_id):
            found.append(child.node_id)
        else:
            found.extend(_owned_variables(graph, child.node_id, seen))
    return found


def _checkpoint_keys(graph, node_id: int) -> list[str]:
    return [a.checkpoint_key for a in graph.nodes[node_id].attributes if a.name == "VARIABLE_VALUE"]


def _tensorflow_module(name: str, folder: Path):
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        raise ModelFileError(
            f"'{folder}' is a TensorFlow SavedModel; reading it needs TensorFlow (pip install tensorflow)."
        ) from None
