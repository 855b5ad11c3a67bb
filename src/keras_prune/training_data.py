"""A user's training data for fine-tuning: a ``.npz`` file or an image folder tree, checked
against the model before any training starts.

* ``.npz``: arrays ``x_train`` and ``y_train``, optionally ``x_val`` and ``y_val`` (or
  ``x_test`` and ``y_test``, as ``keras.datasets`` name them).
* An MNIST-style folder of the four IDX files (``train-images-idx3-ubyte.gz``, ...); its
  test split is the validation data and its images take the model's input shape.
* A folder of class folders (``cats/*.jpg``, ``dogs/*.jpg``), or a folder holding ``train/``
  and optionally ``val/`` (or ``validation/`` or ``test/``) laid out that way. Class indices
  follow the sorted folder names, as in ``keras.utils.image_dataset_from_directory``; images
  are resized to the model's input size.
"""

from __future__ import annotations

import dataclasses
import math
import os
import zipfile
from pathlib import Path

import keras
import numpy as np

from keras_prune.datasets import IDX_FILES, load_idx_dataset

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
VALIDATION_FOLDERS = ("val", "validation", "test")


@dataclasses.dataclass
class TrainingData:
    """Arrays for ``fit``; ``x_val``/``y_val`` are ``None`` without validation data."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    class_names: list[str] | None = None

    @property
    def validation(self) -> tuple[np.ndarray, np.ndarray] | None:
        return None if self.x_val is None else (self.x_val, self.y_val)


def load_training_data(
    path: str | os.PathLike,
    model: keras.Model,
    *,
    validation_split: float = 0.0,
    image_scale: float = 1 / 255,
) -> TrainingData:
    """Loads ``path`` (``.npz`` or image folder) and checks that it fits ``model``.

    Args:
        path: the ``.npz`` file or the image folder.
        model: the model to train; its input shape sizes the images and checks the arrays.
        validation_split: fraction of the training data to hold out when ``path`` has no
            validation data (taken from the end, as Keras does).
        image_scale: pixel values (0-255) are multiplied by this (images only).

    Raises:
        ValueError: the file or folder is missing or malformed, or the data does not fit.

    Example:
        >>> data = load_training_data("train.npz", model)
        >>> model.fit(data.x_train, data.y_train, validation_data=data.validation)
    """
    if not (math.isfinite(image_scale) and image_scale > 0):
        raise ValueError(f"Argument `image_scale` must be > 0, such as 1/255. Received: image_scale={image_scale}")
    if not 0.0 <= validation_split < 1.0:
        raise ValueError(f"Argument `validation_split` must be in [0, 1). Received: validation_split={validation_split}")
    path = Path(path)
    if path.is_dir() and (path / IDX_FILES["x_train"]).is_file():
        data = _load_idx(path, model, image_scale)
    elif path.is_dir():
        data = _load_folder(path, model, image_scale)
    elif path.is_file():
        data = _load_npz(path)
    else:
        raise ValueError(f"Data '{path}' does not exist; pass a .npz file, an IDX folder or an image folder.")
    if validation_split and data.x_val is None:
        cut = len(data.x_train) - round(float(validation_split) * len(data.x_train))
        data = dataclasses.replace(
            data, x_train=data.x_train[:cut], y_train=data.y_train[:cut],
            x_val=data.x_train[cut:], y_val=data.y_train[cut:],
        )
    check_fits_model(data, model, source=str(path))
    return data


def load_inputs(
    path: str | os.PathLike, model: keras.Model, *, image_scale: float = 1 / 255
) -> np.ndarray | dict[str, np.ndarray]:
    """Only the inputs of ``path``, checked against ``model``: data to run the model on, such
    as calibration data, which needs no labels.

    ``path`` is read as :func:`load_training_data` reads it, but a ``.npz`` file needs only
    ``x_train``; for a model with several inputs it holds one array per input, named as the
    inputs (such as ``token_ids`` and ``padding_mask``), and a dict of them is returned.

    Raises:
        ValueError: the file or folder is missing or malformed, or the inputs do not fit.

    Example:
        >>> x = load_inputs("calibration.npz", model)
        >>> model.predict(x)
    """
    path = Path(path)
    inputs = {tensor.name: tuple(tensor.shape) for tensor in getattr(model, "inputs", None) or ()}
    if path.is_file():
        x = _npz_inputs(path, model, list(inputs))
    elif len(inputs) > 1:
        raise ValueError(f"Model '{model.name}' has {len(inputs)} inputs; pass a .npz file holding one array per "
                         f"input, named {list(inputs)}.")
    elif path.is_dir() and (path / IDX_FILES["x_train"]).is_file():
        x = _load_idx(path, model, image_scale).x_train
    elif path.is_dir():
        x = _load_folder(path, model, image_scale).x_train
    else:
        raise ValueError(f"Data '{path}' does not exist; pass a .npz file, an IDX folder or an image folder.")
    arrays = x if isinstance(x, dict) else {"x_train": x}
    lengths = {len(values) for values in arrays.values()}
    if len(lengths) != 1 or 0 in lengths:
        raise ValueError(f"{path}: {', '.join(arrays)} must hold the same nonzero number of samples.")
    for name, values in arrays.items():
        _check_finite(str(path), name, values)
        expected = inputs.get(name) if len(inputs) > 1 else next(iter(inputs.values()), None)
        if expected is not None and not _shape_fits(values.shape, expected):
            raise ValueError(f"{path}: {name} has shape {values.shape} but the model expects inputs of shape {expected}.")
    return x


def _npz_inputs(path: Path, model: keras.Model, names: list[str]) -> np.ndarray | dict[str, np.ndarray]:
    arrays = _read_npz(path)
    if len(names) > 1:
        if not set(names) <= arrays.keys():
            raise ValueError(
                f"Data '{path}' must hold one array per input of model '{model.name}', named {names}; it has "
                f"{sorted(arrays)}."
            )
        return {name: arrays[name] for name in names}
    if "x_train" not in arrays:
        raise ValueError(f"Data '{path}' lacks x_train (it has {sorted(arrays)}); save it with np.savez(path, x_train=...).")
    return arrays["x_train"]


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise ValueError(
            f"Data '{path}' is not a readable .npz file ({error}); save one with "
            "np.savez(path, x_train=..., y_train=...)."
        ) from None


def _load_npz(path: Path) -> TrainingData:
    arrays = _read_npz(path)
    missing = [key for key in ("x_train", "y_train") if key not in arrays]
    if missing:
        raise ValueError(
            f"Data '{path}' lacks {' and '.join(missing)} (it has {sorted(arrays)}); save it with "
            "np.savez(path, x_train=..., y_train=..., x_val=..., y_val=...)."
        )
    split = "val" if "x_val" in arrays or "y_val" in arrays else "test"
    if (f"x_{split}" in arrays) != (f"y_{split}" in arrays):
        raise ValueError(f"Data '{path}' must hold both x_{split} and y_{split}, or neither.")
    return TrainingData(arrays["x_train"], arrays["y_train"], arrays.get(f"x_{split}"), arrays.get(f"y_{split}"))


def _load_idx(path: Path, model: keras.Model, scale: float) -> TrainingData:
    arrays = load_idx_dataset(path, scale=scale)
    shape = tuple(model.inputs[0].shape[1:]) if getattr(model, "inputs", None) else ()
    for key in ("x_train", "x_test"):
        if None not in shape and arrays[key][0].size == int(np.prod(shape)):
            arrays[key] = arrays[key].reshape((-1, *shape))  # (28, 28) files feed (28, 28, 1) or (784,)
    return TrainingData(arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"])


def _load_folder(path: Path, model: keras.Model, scale: float) -> TrainingData:
    height, width, channels = _image_input(model)
    train_dir = path / "train" if (path / "train").is_dir() else path
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(
            f"Image folder '{train_dir}' has no class folders; lay it out as "
            "<folder>/<class name>/<image>.jpg (optionally under train/ and val/)."
        )
    x, y = _read_images(train_dir, classes, (height, width), channels, scale)
    val_dir = next((path / name for name in VALIDATION_FOLDERS if train_dir != path and (path / name).is_dir()), None)
    x_val = y_val = None
    if val_dir is not None:
        x_val, y_val = _read_images(val_dir, classes, (height, width), channels, scale)
    return TrainingData(x, y, x_val, y_val, class_names=classes)


def _image_input(model: keras.Model) -> tuple[int, int, int]:
    shape = tuple(model.inputs[0].shape) if getattr(model, "inputs", None) else None
    if shape is None or len(shape) != 4 or None in shape[1:] or shape[3] not in (1, 3, 4):
        raise ValueError(
            f"An image folder needs a model with one (height, width, 1|3|4) input of fixed size. "
            f"Received: input shape {shape}; pass the data as a .npz file instead."
        )
    return int(shape[1]), int(shape[2]), int(shape[3])


def _read_images(folder: Path, classes, size, channels, scale) -> tuple[np.ndarray, np.ndarray]:
    mode = {1: "grayscale", 3: "rgb", 4: "rgba"}[channels]
    images, labels = [], []
    for index, name in enumerate(classes):
        class_dir = folder / name
        files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if class_dir.is_dir() else []
        for file in files:
            try:
                image = keras.utils.load_img(file, color_mode=mode, target_size=size)
            except Exception as error:  # noqa: BLE001 (PIL raises several types for unreadable images)
                raise ValueError(f"Cannot read image '{file}' ({error}); remove or replace it.") from None
            images.append(keras.utils.img_to_array(image, dtype="float32") * scale)
            labels.append(index)
    if not images:
        raise ValueError(f"Image folder '{folder}' holds no {'/'.join(IMAGE_SUFFIXES)} files in its class folders.")
    return np.stack(images), np.asarray(labels, dtype="int64")


def check_fits_model(data: TrainingData, model: keras.Model, source: str = "data") -> None:
    """Raises a ValueError naming the fix if the arrays cannot feed ``model``."""
    _check_single_io(model, source)
    expected = tuple(model.inputs[0].shape) if getattr(model, "inputs", None) else None
    splits = [("train", data.x_train, data.y_train)]
    if data.x_val is not None:
        splits.append(("val", data.x_val, data.y_val))
    for split, x, y in splits:
        x_name, y_name = f"x_{split}", f"y_{split}"
        if len(x) == 0 or len(x) != len(y):
            raise ValueError(
                f"{source}: {x_name} has {len(x)} samples and {y_name} {len(y)}; they must be "
                "equal and nonzero."
            )
        _check_finite(source, x_name, x)
        _check_finite(source, y_name, y)
        if expected is not None and not _shape_fits(x.shape, expected):
            hint = " Add the channel axis (x[..., None])." if x.shape[1:] == expected[1:-1] else ""
            raise ValueError(
                f"{source}: {x_name} has shape {x.shape} but the model expects inputs of shape "
                f"{expected}.{hint}"
            )
        _check_labels(source, y_name, y, model)


def _check_single_io(model: keras.Model, source: str) -> None:
    """One x array and one y array feed one input and one output, nothing else."""
    inputs, outputs = (len(getattr(model, name, None) or ()) for name in ("inputs", "outputs"))
    if inputs > 1 or outputs > 1:
        raise ValueError(
            f"{source}: a data file holds one input array (x) and one label array (y), but model "
            f"'{model.name}' has {inputs} inputs and {outputs} outputs; fine-tune it in Python "
            "with model.fit, passing a list (or dict) of arrays per input and output."
        )


def _check_finite(source: str, name: str, values: np.ndarray) -> None:
    numeric = np.issubdtype(values.dtype, np.number) or values.dtype == np.bool_
    if not numeric or not np.all(np.isfinite(values)):
        raise ValueError(f"{source}: {name} must hold finite numbers (no NaN, infinity or text).")


def _shape_fits(shape, expected) -> bool:
    return len(shape) == len(expected) and all(e is None or e == s for s, e in zip(shape[1:], expected[1:]))


def _check_labels(source: str, name: str, y: np.ndarray, model: keras.Model) -> None:
    outputs = tuple(model.outputs[0].shape) if getattr(model, "outputs", None) else None
    if outputs is None or len(outputs) != 2 or not outputs[1] or outputs[1] < 2:
        return  # regression or unusual heads: shapes are checked by Keras itself
    classes = outputs[1]
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]  # class indices with a trailing axis, which sparse losses accept
    if y.ndim == 2 and y.shape[1] != classes:
        raise ValueError(f"{source}: {name} has {y.shape[1]} columns but the model outputs {classes} classes.")
    if y.ndim == 1:
        if not np.issubdtype(y.dtype, np.integer) and not np.all(np.mod(y, 1) == 0):
            raise ValueError(f"{source}: {name} must hold integer class indices.")
        if y.min() < 0 or y.max() >= classes:
            raise ValueError(
                f"{source}: {name} holds class indices {int(y.min())}..{int(y.max())} but the model "
                f"outputs {classes} classes (0..{classes - 1})."
            )
