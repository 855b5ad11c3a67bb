"""Loading a model saved by Keras 2 (tf.keras 2.x or standalone Keras 2.x) as a Keras 3 model:
read the config, translate it, build it, put the saved weights in, compile it with the saved
compile settings, and attach the list of translations.

Four sources: an HDF5 file (``model.save("m.h5")``), a JSON architecture with an HDF5 weights
file (``model.to_json()`` and ``model.save_weights("w.h5")``), a tf.keras SavedModel folder
(``model.save("folder")``), and the ``.keras`` file of tf.keras 2.13-2.15.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import keras

from keras_prune.io import ModelFileError, custom_objects_advice, error_summary, innermost_error
from keras_prune.legacy import archive, h5, savedmodel, weights
from keras_prune.legacy.config import translate_config
from keras_prune.legacy.layers import TF_KERAS_ADVICE
from keras_prune.legacy.notes import Conversion, attach
from keras_prune.legacy.training import compile_like_keras2, from_compile_config

UNRECORDED = "2 (version not recorded)"


def is_legacy_json(config) -> bool:
    """Whether a parsed ``to_json()`` document comes from Keras 1 or 2 (Keras 3 writes ``module``)."""
    return isinstance(config, dict) and "class_name" in config and "module" not in config


def load_h5(path: Path, *, custom_objects: dict | None = None, safe_mode: bool = True) -> keras.Model:
    """A Keras 2 ``.h5``/``.hdf5`` model file as a Keras 3 model (see :func:`build`)."""
    version = h5.keras_version(path) or UNRECORDED
    _check_version(path, version)
    config = h5.model_config(path)
    _check_backend(path, config)
    model, notes = build(config, path, custom_objects=custom_objects, safe_mode=safe_mode)
    weights.assign(model, h5.layer_weights(path) or {}, str(path))
    compile_like_keras2(model, h5.training_config(path), notes)
    return attach(model, Conversion(str(path), "HDF5 file", version, tuple(notes)))


def load_json(path: Path, weights_path: Path, config: dict, *, custom_objects: dict | None = None,
              safe_mode: bool = True) -> keras.Model:
    """A Keras 2 JSON architecture (already parsed as ``config``) with its weights file."""
    version = str(config.get("keras_version") or UNRECORDED)
    _check_version(path, version)
    model, notes = build(config, path, custom_objects=custom_objects, safe_mode=safe_mode)
    saved = h5.layer_weights(weights_path)
    if saved is None:  # weights saved by Keras 3 into this architecture
        model.load_weights(weights_path)
    else:
        weights.assign(model, saved, str(weights_path))
    return attach(model, Conversion(str(path), "JSON architecture", version, tuple(notes)))


def load_keras_zip(path: Path, *, custom_objects: dict | None = None, safe_mode: bool = True) -> keras.Model:
    """A ``.keras`` file written by tf.keras 2.13-2.15 as a Keras 3 model."""
    version = archive.keras_version(path) or "2"
    config = archive.config(path)
    model, notes = build(config, path, custom_objects=custom_objects, safe_mode=safe_mode)
    with tempfile.TemporaryDirectory() as folder:
        model.load_weights(archive.extract_weights(path, Path(folder)))
    compile_like_keras2(model, from_compile_config(config.get("compile_config")), notes)
    return attach(model, Conversion(str(path), "tf.keras .keras file", version, tuple(notes)))


def load_saved_model(folder: Path, *, custom_objects: dict | None = None, safe_mode: bool = True) -> keras.Model:
    """A tf.keras SavedModel folder (with Keras metadata) as a Keras 3 model."""
    metadata = savedmodel.read_metadata(folder)
    root = metadata[0]
    version = str(root.get("keras_version") or UNRECORDED)
    if root.get("class_name") not in ("Sequential", "Functional", "Model") or not isinstance(root.get("config"), dict):
        raise ModelFileError(
            f"'{folder}' is a subclassed tf.keras model ({root.get('class_name')}): its SavedModel holds "
            "traced TensorFlow functions, not a layer config to rebuild; create the model in Keras 3 "
            "code and load its weights, or save a Sequential or functional model."
        )
    config = {"class_name": root["class_name"], "config": root["config"]}
    model, notes = build(config, folder, custom_objects=custom_objects, safe_mode=safe_mode)
    saved, order = savedmodel.layer_weights(folder, metadata)
    weights.assign(model, saved, str(folder), order=order)
    compile_like_keras2(model, root.get("training_config"), notes)
    return attach(model, Conversion(str(folder), "SavedModel", version, tuple(notes)))


def build(config: dict, source: Path, *, custom_objects: dict | None = None, safe_mode: bool = True):
    """Translates a Keras 2 model ``config`` and builds it in Keras 3 (without weights).

    Returns:
        ``(model, translations)``.

    Example:
        >>> old = {"class_name": "Sequential", "config": {"name": "s", "layers": [{"class_name": "Dense",
        ...        "config": {"name": "d", "units": 2, "batch_input_shape": [None, 3]}}]}}
        >>> model, notes = build(old, Path("m.json"))
        >>> model.input_shape, [note.setting for note in notes]
        ((None, 3), ['batch_input_shape'])
    """
    try:
        new, notes = translate_config(config)
    except ModelFileError as error:  # a layer Keras 3 cannot rebuild: say which file
        raise ModelFileError(f"Cannot load '{source}': {error}") from None
    custom_objects = _with_short_names(dict(custom_objects or {}), new)
    _check_custom_classes(new, source, custom_objects)
    try:
        with keras.saving.custom_object_scope(custom_objects):
            model = keras.saving.deserialize_keras_object(new, custom_objects=custom_objects, safe_mode=safe_mode)
    except ModelFileError:
        raise
    except Exception as error:  # Keras raises TypeError, ValueError, KeyError... for configs it cannot build
        raise ModelFileError(
            f"Cannot rebuild '{source}' in Keras 3 ({error_summary(innermost_error(error))}); keras-prune has no "
            f"translation for this yet. Meanwhile: {TF_KERAS_ADVICE}."
        ) from error
    if not isinstance(model, keras.Model):
        raise ModelFileError(f"'{source}' describes a {type(model).__name__}, not a model.")
    return model, notes


def _check_version(path: Path, version: str) -> None:
    if version.startswith("1."):
        raise ModelFileError(
            f"'{path}' was saved by Keras {version}, whose files Keras 3 cannot read; open it with "
            "standalone Keras 2.2.5 (pip install keras==2.2.5) and save it again."
        )


def _check_backend(path: Path, config: dict) -> None:
    backend = h5.backend(path)
    if backend in ("theano", "cntk") and "Conv" in json.dumps(config):
        raise ModelFileError(
            f"'{path}' was saved by Keras 2 on {backend}, whose convolution kernels are flipped; open it with "
            "standalone Keras 2.2.5 on TensorFlow (it converts them) and save it again."
        )


def _custom_names(config, found: list[tuple[str, str, str]], layer: str = "?") -> list[tuple[str, str, str]]:
    """``(kind, name, layer)`` of every class or activation function that the translated config
    finds by its registered name (objects that are not part of Keras)."""
    if isinstance(config, dict):
        inner = config.get("config")
        layer = inner.get("name", layer) if isinstance(inner, dict) else layer
        if "class_name" in config and config.get("module", "") is None:
            found.append(("layer" if isinstance(inner, dict) and "name" in inner else "class", config["class_name"], layer))
        for key, value in config.items():
            if key.endswith("activation") and isinstance(value, str) and not _keras_activation(value):
                found.append(("activation function", value, layer))
            _custom_names(value, found, layer)
    elif isinstance(config, list):
        for value in config:
            _custom_names(value, found, layer)
    return found


def _keras_activation(name: str) -> bool:
    try:
        keras.activations.get(name)
    except ValueError:
        return False
    return True


def _with_short_names(custom_objects: dict, config: dict) -> dict:
    """tf.keras saved registered classes as ``package>Name``; also find them by ``Name``."""
    for _, name, _ in _custom_names(config, []):
        short = name.rsplit(">", 1)[-1]
        if name not in custom_objects and short in custom_objects:
            custom_objects[name] = custom_objects[short]
    return custom_objects


def _check_custom_classes(config: dict, source: Path, custom_objects: dict) -> None:
    for kind, name, layer in _custom_names(config, []):
        if keras.saving.get_registered_object(name, custom_objects) is None:
            raise ModelFileError(
                f"Cannot load '{source}': it uses the custom {kind} '{name}' (in layer '{layer}'), which is not "
                f"part of Keras; {custom_objects_advice(name)}."
            )
