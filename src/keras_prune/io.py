"""Loading and saving model files safely: clear errors, atomic writes, no overwrites."""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import warnings
from pathlib import Path

import keras

MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")
ARCHITECTURE_SUFFIX = ".json"
SPARSE_SUFFIX = ".kpsparse"  # keras_prune.export_sparse's compact format


class ModelFileError(ValueError):
    """A model file is missing, unreadable, or not a model keras-prune can load."""


def load_model(
    path: str | os.PathLike,
    *,
    weights: str | os.PathLike | None = None,
    safe_mode: bool = True,
    custom_objects: dict | None = None,
) -> keras.Model:
    """Loads a ``.keras`` model, an ``.h5`` model, a JSON architecture plus weights, or a
    tf.keras SavedModel folder.

    Files written by Keras 2 (tf.keras 2.x, standalone Keras 2.x) are translated to Keras 3 by
    :mod:`keras_prune.legacy`, which lists every change: see
    :func:`keras_prune.legacy.conversion_of`.

    Args:
        path: the model file, a ``.json`` architecture (from ``model.to_json()``), or a
            SavedModel folder written by tf.keras.
        weights: the weights file (``.weights.h5`` or legacy ``.h5``) for a ``.json`` path.
        safe_mode: refuse files that carry code (Lambda layers); pass ``False`` only for
            files you trust.
        custom_objects: ``{name: class or function}`` for the custom layers and functions
            the model uses (CLI: ``--custom-objects module.py``).

    Raises:
        ModelFileError: the file is missing, truncated, not a Keras model, carries code
            while ``safe_mode`` is on, or uses a custom class not in ``custom_objects``.

    Example:
        >>> model = load_model("model.json", weights="model.weights.h5")  # doctest: +SKIP
    """
    from keras_prune import legacy  # registers keras2_hard_sigmoid, which converted models use

    custom_objects = dict(custom_objects or {})
    with keras.saving.custom_object_scope(custom_objects):
        path = Path(path)
        if path.is_dir() and legacy.savedmodel.is_saved_model(path):
            if weights is not None:
                raise ModelFileError(f"Argument `weights` is only for a .json architecture; '{path}' holds its own.")
            return legacy.load_saved_model(path, custom_objects=custom_objects, safe_mode=safe_mode)
        return _load_file(_check_input(path, "Model"), weights, safe_mode, custom_objects)


def _load_file(path: Path, weights, safe_mode: bool, custom_objects: dict) -> keras.Model:
    from keras_prune import legacy

    suffix = path.suffix.lower()
    if suffix == ARCHITECTURE_SUFFIX:
        if weights is None:
            raise ModelFileError(
                f"'{path}' is an architecture without weights; pass its weights file too "
                "(weights=..., CLI: --weights FILE.h5)."
            )
        return _load_json(path, _check_input(weights, "Weights"), safe_mode, custom_objects)
    if weights is not None:
        raise ModelFileError(
            f"Argument `weights` is only for a .json architecture; '{path}' holds its own weights."
        )
    if path.name.lower().endswith(".weights.h5"):
        raise ModelFileError(
            f"'{path}' holds only weights; load its architecture (.json) and pass this file "
            "as weights (CLI: MODEL.json --weights FILE)."
        )
    if suffix == SPARSE_SUFFIX:
        return _load_sparse(path, safe_mode)
    if suffix not in MODEL_SUFFIXES:
        raise ModelFileError(
            f"Model file '{path}' has an unknown extension; expected one of "
            f"{', '.join(MODEL_SUFFIXES + (ARCHITECTURE_SUFFIX, SPARSE_SUFFIX))}, or a SavedModel folder."
        )
    if suffix != ".keras" and legacy.h5.is_weights_only(path):
        raise ModelFileError(
            f"'{path}' holds only weights (Keras 2's save_weights); load its architecture (.json) and pass "
            "this file as weights (CLI: MODEL.json --weights FILE)."
        )
    if suffix != ".keras" and legacy.h5.is_legacy_model(path):
        with _legacy_errors(path):
            return legacy.load_h5(path, custom_objects=custom_objects, safe_mode=safe_mode)
    if suffix == ".keras" and legacy.archive.is_legacy(path):
        with _legacy_errors(path):
            return legacy.load_keras_zip(path, custom_objects=custom_objects, safe_mode=safe_mode)
    with _load_errors(path), warnings.catch_warnings():
        # Files saved without optimizer state (save_model's default) get a fresh optimizer.
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        try:
            return keras.saving.load_model(path, safe_mode=safe_mode, custom_objects=custom_objects)
        except Exception as error:  # Keras 3's own .h5 files can fail on their compile settings
            if suffix == ".keras":
                raise
            reason = _reason(error)
            model = keras.saving.load_model(path, safe_mode=safe_mode, custom_objects=custom_objects, compile=False)
    warnings.warn(f"'{path}': its compile settings could not be restored ({reason}); loaded uncompiled.",
                  stacklevel=2)
    return model


def _load_sparse(path: Path, safe_mode: bool) -> keras.Model:
    from keras_prune.export.sparse import load_sparse

    try:
        return load_sparse(path, safe_mode=safe_mode)
    except ValueError as error:
        raise ModelFileError(f"Cannot load '{path}': {_reason(error)}") from error


def _check_input(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if path.is_dir():
        hint = " (a SavedModel folder needs saved_model.pb)" if what == "Model" else ""
        raise ModelFileError(f"{what} path '{path}' is a folder{hint}; pass the file itself.")
    if not path.is_file():
        raise ModelFileError(f"{what} file '{path}' does not exist. Check the path.")
    return path


def _load_json(path: Path, weights: Path, safe_mode: bool, custom_objects: dict) -> keras.Model:
    from keras_prune import legacy

    with _load_errors(path):
        try:
            config = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ModelFileError(f"'{path}' is not a JSON model architecture: {error}.") from None
        if not isinstance(config, dict) or "class_name" not in config:
            raise ModelFileError(
                f"'{path}' is JSON but not a model architecture (no `class_name`); save one "
                "with `model.to_json()`."
            )
        if legacy.is_legacy_json(config):
            with _legacy_errors(path):
                return legacy.load_json(path, weights, config, custom_objects=custom_objects, safe_mode=safe_mode)
        model = keras.saving.deserialize_keras_object(config, safe_mode=safe_mode, custom_objects=custom_objects)
        if not isinstance(model, keras.Model):
            raise ModelFileError(f"'{path}' describes a {type(model).__name__}, not a model.")
    with _load_errors(weights, architecture=path):
        model.load_weights(weights)
    return model


@contextlib.contextmanager
def _legacy_errors(path: Path):
    """Reading errors of a Keras 2 file (h5py, JSON) as one ModelFileError; the loader's own
    ModelFileErrors pass through."""
    try:
        yield
    except ModelFileError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as error:
        raise ModelFileError(
            f"Cannot read '{path}' as a Keras 2 model ({_reason(error)}); check that the file is complete."
        ) from error


@contextlib.contextmanager
def _load_errors(path: Path, *, architecture: Path | None = None):
    """Turns the many error types of Keras, h5py and zipfile into one clear ModelFileError.

    ``architecture`` is set when ``path`` is a weights file loaded into that architecture.
    """
    try:
        yield
    except ModelFileError:
        raise
    except Exception as error:  # h5py, zipfile and TensorFlow raise many types for bad files
        text = str(error)
        if "safe_mode" in text or "unsafe" in text.lower():
            raise ModelFileError(
                f"Model file '{path}' contains code (for example a Lambda layer), which safe "
                "mode refuses to run. Load it with safe_mode=False (CLI: --unsafe) only if "
                "you trust the file."
            ) from error
        missing = _MISSING_CLASS.search(str(innermost_error(error)))
        if missing:
            raise ModelFileError(
                f"Cannot load '{path}': {missing[0]} (a custom {missing[1]}, not part of Keras); "
                f"{custom_objects_advice(missing[2])}."
            ) from error
        if architecture is not None:
            raise ModelFileError(
                f"Cannot load weights '{path}' into the architecture '{architecture}' "
                f"({_reason(error)}); check that the weights were saved from this architecture."
            ) from error
        raise ModelFileError(
            f"Cannot load '{path}' as a Keras model ({_reason(error)}); check that the "
            "file is complete and was saved by Keras."
        ) from error


# Keras's error for a class or function it has no code for.
_MISSING_CLASS = re.compile(r"Could not locate (class|function) '([^']+)'")


def custom_objects_advice(name: str) -> str:
    """What to do about a custom class or function ``name`` that Keras cannot find.

    Example:
        >>> custom_objects_advice("my_pkg>Scale")
        "pass the code that defines it: --custom-objects module.py (API: custom_objects={'Scale': Scale})"
    """
    short = name.rsplit(">", 1)[-1]
    return f"pass the code that defines it: --custom-objects module.py (API: custom_objects={{'{short}': {short}}})"


def check_output_path(
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    inputs=(),
    suffixes: tuple[str, ...] | None = None,
) -> Path:
    """Validates an output path before any work: never an input, never a silent overwrite.

    Args:
        path: the file to write.
        overwrite: allow replacing an existing file (CLI: ``--overwrite``).
        inputs: input files the output must not be.
        suffixes: allowed extensions (lower case), or ``None`` for any.

    Raises:
        ValueError: the path is an input, exists, has a wrong extension, or its folder is
            missing or not writable.
    """
    path = Path(path)
    for source in inputs:
        if Path(source).resolve() == path.resolve():
            raise ValueError(f"Output '{path}' is the input file; choose another output path.")
    if suffixes is not None and not any(path.name.lower().endswith(s) for s in suffixes):
        raise ValueError(
            f"Output '{path}' must end with one of {', '.join(suffixes)}; Keras picks the "
            "format from the extension."
        )
    if path.is_dir():
        raise ValueError(f"Output '{path}' is a folder; give a file name inside it.")
    if path.exists() and not overwrite:
        raise ValueError(f"Output '{path}' already exists; pass --overwrite to replace it.")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ValueError(f"Output folder '{parent}' does not exist; create it first.")
    if not _writable(parent):
        raise ValueError(f"Output folder '{parent}' is not writable; choose another output path.")
    return path


def _writable(folder: Path) -> bool:
    # Creating a file is the only reliable test: os.access says yes to root on read-only mounts.
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


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


def save_model(
    model: keras.Model,
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    include_optimizer: bool = False,
) -> Path:
    """Saves ``model`` atomically; refuses to replace an existing file unless ``overwrite``.

    The file keeps the compile settings (loss, metrics, optimizer class and its settings), so
    the loaded model is compiled as before, but not the optimizer's state (Adam's moments and
    the like, often twice the size of the weights) unless ``include_optimizer``: a model file
    to ship or to measure, not a checkpoint to resume training from.

    Args:
        model: the model to save.
        path: a ``.keras`` (or legacy ``.h5``) file; written to a temporary file in the same
            folder, then renamed into place, so a failure leaves nothing behind.
        overwrite: replace ``path`` if it exists.
        include_optimizer: also save the optimizer's variables.

    Returns:
        The path written.

    Example:
        >>> save_model(model, "pruned.keras")  # doctest: +SKIP
        PosixPath('pruned.keras')
    """
    path = check_output_path(path, overwrite=overwrite, suffixes=MODEL_SUFFIXES)
    return atomic_write(path, lambda tmp: write_model(model, tmp, include_optimizer=include_optimizer))


def write_model(model: keras.Model, path: str | os.PathLike, *, include_optimizer: bool = False) -> None:
    """``model.save(path)``, without the optimizer's state unless ``include_optimizer``.

    No checks and no temporary file: :func:`save_model` adds those.
    """
    if include_optimizer:
        model.save(path)
        return
    with optimizer_state_detached(model):
        model.save(path)


@contextlib.contextmanager
def optimizer_state_detached(model: keras.Model):
    """Within the block, ``model.optimizer`` is a fresh, unbuilt copy of itself (same class and
    settings, no variables beyond the step counter and learning rate), so saving writes the
    compile settings without the optimizer's state. The optimizer is put back afterwards.

    Keras saves every attribute that holds state, the optimizer included; an unbuilt copy is
    what a model compiled but never trained carries, and loads the same way.
    """
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None or not getattr(optimizer, "built", False):
        yield
        return
    try:
        fresh = optimizer.__class__.from_config(optimizer.get_config())
    except (TypeError, ValueError, KeyError, NotImplementedError) as error:  # a config that does not round-trip
        warnings.warn(
            f"The optimizer {type(optimizer).__name__} cannot be copied from its config "
            f"({error_summary(error)}), so its state is saved with the model.",
            stacklevel=3,
        )
        yield
        return
    model.optimizer = fresh
    try:
        yield
    finally:
        model.optimizer = optimizer


# Lines of an error message that are a traceback, not a reason (TensorFlow puts the stack of
# the failing op inside its messages), and the object dumps Keras appends to its reasons.
_NOISE = re.compile(r'^(File "|Traceback |\[\[|\[Op:|.*\(most recent call last\):$)')
_DUMP = re.compile(r"\s*(Full object config:|Target variable:|config=\{).*$")
# A first line that only announces the reason on the next line: "... for object <Dense>:", or
# the header Keras puts before an error raised inside a layer's call.
_ANNOUNCEMENT = re.compile(r".*:|Exception encountered when calling .*")


def error_summary(error: BaseException, limit: int = 300) -> str:
    r"""The informative start of ``error``'s message on one line, at most ``limit`` characters.

    A first line that only announces details ("... for object <Dense name=d>:", "Exception
    encountered when calling Dense.call().") is joined with the next one; traceback-like lines
    (``File "..."``, TensorFlow's op stacks) and the object dumps Keras appends ("Full object
    config: {...}") are dropped.

    Example:
        >>> error_summary(ValueError("2 objects could not be loaded:\n\nshape (4, 3) != (4, 5)"))
        '2 objects could not be loaded: shape (4, 3) != (4, 5)'
    """
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(error)).splitlines()]
    lines = [line for line in lines if line and not _NOISE.match(line)]
    if not lines:
        return type(error).__name__
    count = 1  # lines joined: the first, and up to two more while each one only announces the next
    while count < min(3, len(lines)) and _ANNOUNCEMENT.fullmatch(lines[count - 1]):
        count += 1
    text = " ".join(lines[:count])
    text = _DUMP.sub("", text) or text
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def innermost_error(error: BaseException) -> BaseException:
    """The last exception of ``error``'s ``__cause__`` / ``__context__`` chain: the reason a
    generic wrapper ("could not be deserialized properly") hides."""
    seen = {id(error)}
    while True:
        nxt = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
        if nxt is None or id(nxt) in seen:
            return error
        seen.add(id(nxt))
        error = nxt


def _reason(error: BaseException) -> str:
    """What went wrong, from the innermost error of the chain when there is one."""
    return error_summary(innermost_error(error))
