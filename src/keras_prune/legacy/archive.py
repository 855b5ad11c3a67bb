"""Reading the ``.keras`` files of tf.keras 2.13 to 2.15: a zip of ``metadata.json`` (with the
``keras_version``), ``config.json`` (a tf.keras config in nearly Keras 3's format) and
``model.weights.h5`` (laid out as Keras 3 lays out its own weights)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

WEIGHTS = "model.weights.h5"


def keras_version(path: Path) -> str | None:
    """The ``keras_version`` of a ``.keras`` file, or ``None`` if it is not a readable zip."""
    try:
        with zipfile.ZipFile(path) as archive:
            return str(json.loads(archive.read("metadata.json")).get("keras_version") or "")
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


def is_legacy(path: Path) -> bool:
    """Whether ``path`` is a ``.keras`` file written by tf.keras 2.x (not by Keras 3)."""
    return (keras_version(path) or "").startswith("2.")


def config(path: Path) -> dict:
    """The model config of a ``.keras`` file, parsed."""
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read("config.json"))


def extract_weights(path: Path, folder: Path) -> Path:
    """Extracts the weights file of a ``.keras`` file into ``folder``; returns its path."""
    with zipfile.ZipFile(path) as archive:
        return Path(archive.extract(WEIGHTS, folder))
