"""Loading and saving model files safely: clear errors, atomic writes, no overwrites."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import keras

MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")


class ModelFileError(ValueError):
    """A model file is missing, unreadable, or not a model keras-prune can load."""


def load_model(path: str | os.PathLike, *, safe_mode: bool = True) -> keras.Model:
    """Loads a ``.keras`` or legacy ``.h5`` model without compiling surprises.

    Args:
        path: the model file.
        safe_mode: refuse files that carry code (Lambda layers); pass ``False`` only for
            files you trust.

    Raises:
        ModelFileError: the file is missing, truncated, or not a Keras model.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"Model file '{path}' does not exist. Check the path.")
    if path.suffix.lower() not in MODEL_SUFFIXES:
        raise ModelFileError(
            f"Model file '{path}' has an unknown extension; expected one of "
            f"{', '.join(MODEL_SUFFIXES)}."
        )
    try:
        return keras.saving.load_model(path, safe_mode=safe_mode)
    except ValueError as error:
        if "safe_mode" in str(error) or "unsafe" in str(error).lower():
            raise ModelFileError(
                f"Model file '{path}' contains code (for example a Lambda layer), which safe "
                "mode refuses to run. Load it with safe_mode=False (CLI: --unsafe) only if "
                "you trust the file."
            ) from error
        raise ModelFileError(f"Cannot load '{path}' as a Keras model: {_first_line(error)}") from error
    except Exception as error:  # h5py, zipfile and TensorFlow raise many types for bad files
        raise ModelFileError(f"Cannot load '{path}' as a Keras model: {_first_line(error)}") from error


def check_output_path(path: str | os.PathLike, *, overwrite: bool = False, inputs=()) -> Path:
    """Validates an output path before any work: never an input, never a silent overwrite."""
    path = Path(path)
    for source in inputs:
        if Path(source).resolve() == path.resolve():
            raise ValueError(f"Output '{path}' is the input file; choose another output path.")
    if path.exists() and not overwrite:
        raise ValueError(f"Output '{path}' already exists; pass --overwrite to replace it.")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ValueError(f"Output folder '{parent}' does not exist; create it first.")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"Output folder '{parent}' is not writable; choose another output path.")
    return path


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Calls ``write(tmp_path)`` then renames onto ``path``, so no half-written file remains.

    The temporary file keeps ``path``'s suffix, because Keras picks the format from it.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent or ".")
    os.close(fd)
    os.unlink(tmp)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def save_model(model: keras.Model, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Saves ``model`` atomically; refuses to replace an existing file unless ``overwrite``."""
    check_output_path(path, overwrite=overwrite)
    return atomic_write(path, lambda tmp: model.save(tmp))


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
